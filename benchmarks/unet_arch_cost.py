"""What attention at higher resolution would cost the toy UNet: one pretraining step, measured side by side.

    python benchmarks/unet_arch_cost.py [--batch 48] [--repeats 6]

The shipped toy UNet has cross-attention only at 4x4 (SD 1.5 has it at 64, 32 and 16 px latents). In the toy
world that leaves a LoRA on the attention projections (the CAT authors' choice) no way to draw a spatial
pattern, which is why `catlab demo` adds the ResNet convolutions (docs/results.md). This script times a full
training step (forward, backward, AdamW) at pretraining batch size for the shipped layout and for layouts with
attention at 8x8 and at 16x16 too, all with random weights, and prints parameter counts and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

LAYOUTS = {
    "shipped (attention at 4x4)": (
        ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "attention at 8x8 and 4x4": (
        ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    "attention at 16x16, 8x8, 4x4": (("CrossAttnDownBlock2D",) * 3, ("CrossAttnUpBlock2D",) * 3),
}


def build(down: tuple[str, ...], up: tuple[str, ...]):
    """The shipped builder's UNet with other block types (catlab.toyworld.build.build_unet)."""
    from diffusers import UNet2DConditionModel

    from catlab.toyworld.build import TEXT_HIDDEN, build_unet

    cfg = dict(build_unet().config)
    cfg.update(down_block_types=down, up_block_types=up)
    assert cfg["cross_attention_dim"] == TEXT_HIDDEN
    return UNet2DConditionModel.from_config(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=48, help="pretraining batch size (PretrainConfig.unet_batch)")
    ap.add_argument("--repeats", type=int, default=6, help="timed rounds; layouts are interleaved within a round")
    args = ap.parse_args()
    from catlab.toyworld.build import MAX_TOKENS, TEXT_HIDDEN

    torch.manual_seed(0)
    models = {name: build(*layout) for name, layout in LAYOUTS.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    x = torch.randn(args.batch, 4, 16, 16)  # (B, 4, 16, 16) toy latents
    text = torch.randn(args.batch, MAX_TOKENS, TEXT_HIDDEN)  # (B, L, D)
    t = torch.randint(0, 1000, (args.batch,))
    times: dict[str, list[float]] = {name: [] for name in models}

    def step(name: str) -> float:
        t0 = time.perf_counter()
        loss = models[name](x, t, encoder_hidden_states=text).sample.pow(2).mean()
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t0

    for name in models:  # warm-up
        step(name)
    for _ in range(args.repeats):
        for name in models:
            times[name].append(step(name))
    ref = statistics.median(times[next(iter(models))])
    print(
        f"toy UNet pretraining step, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}:"
    )
    for name, m in models.items():
        med = statistics.median(times[name])
        n = sum(p.numel() for p in m.parameters()) / 1e6
        print(f"  {name:30s} {n:5.2f}M params  {med * 1000:7.0f} ms/step  {med / ref:4.2f}x")


if __name__ == "__main__":
    main()
