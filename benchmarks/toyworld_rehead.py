"""Experiment: give the shipped toy UNet's attention fewer, wider heads, and measure what it saves and what it costs.

    python benchmarks/toyworld_rehead.py --out runs/reheaded --steps 2000 --flip 0
    CATLAB_TOYWORLD_DIR=runs/reheaded python benchmarks/toyworld_quality.py
    CATLAB_TOYWORLD_DIR=runs/reheaded python benchmarks/headline.py --concepts huge_circle --out runs/headline_reheaded

diffusers' UNet2DConditionModel reads `attention_head_dim` as the number of heads (a naming slip it keeps for SD
1.x configs), so the toy UNet's `attention_head_dim=32` gave every attention layer 32 heads: 2 channels per head
at 8x8 (64 channels) and 4 at 4x4 (128). SDPA's CPU kernels pay per head, so such heads make
every step dearer (this script prints by how much). This script builds the same UNet with 32 channels per head
(1, 2 and 4 heads per block: `attention_head_dim=(1, 2, 4)`), loads every shipped weight into it (the shapes do not
depend on the heads, but the function does), fine-tunes it with the pretraining loss as
benchmarks/toyworld_grow_attention.py does, and writes a complete asset folder. Before fine-tuning it times a
training step and a sampling forward of both UNets, side by side on one thread.
"""

from __future__ import annotations

import statistics
import time

import torch
from toyworld_grow_attention import finetune, max_output_gap, start

CHANNELS_PER_HEAD = 32  # what `attention_head_dim=32` was meant to say


def reheaded(unet, channels_per_head: int = CHANNELS_PER_HEAD):
    """The same UNet with `channels_per_head` channels per attention head, carrying every weight of `unet`."""
    from diffusers import UNet2DConditionModel

    cfg = dict(unet.config)
    cfg["attention_head_dim"] = tuple(
        max(1, ch // channels_per_head) for ch in cfg["block_out_channels"]
    )  # heads per block
    new = UNet2DConditionModel.from_config(cfg)
    new.load_state_dict(unet.state_dict(), strict=True)
    return new


def time_side_by_side(unets: dict, rounds: int = 5) -> None:
    """Median ms of a LoRA-sized training step (batch 4; all weights train here, which only adds optimiser work)
    and of a no-grad forward at a sampling batch (64 rows), the UNets interleaved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each `catlab demo` worker
    times = {name: {"train step, batch 4": [], "forward, batch 64": []} for name in unets}
    for _ in range(rounds):
        for name, unet in unets.items():
            z, t, c = (
                torch.randn(4, 4, 16, 16),
                torch.randint(0, 1000, (4,)),
                torch.randn(4, 12, unet.config.cross_attention_dim),
            )
            t0 = time.perf_counter()
            unet(z, t, encoder_hidden_states=c).sample.square().mean().backward()
            times[name]["train step, batch 4"].append(time.perf_counter() - t0)
            unet.zero_grad(set_to_none=True)
            z, t, c = (
                torch.randn(64, 4, 16, 16),
                torch.full((64,), 500),
                torch.randn(64, 12, unet.config.cross_attention_dim),
            )
            t0 = time.perf_counter()
            with torch.no_grad():
                unet(z, t, encoder_hidden_states=c)
            times[name]["forward, batch 64"].append(time.perf_counter() - t0)
    first = next(iter(unets))
    for name, cols in times.items():
        cells = [
            f"{k} {1000 * statistics.median(v):.1f} ms ({statistics.median(v) / statistics.median(times[first][k]):.2f}x)"
            for k, v in cols.items()
        ]
        print(f"  {name:<28}" + "   ".join(cells))
    torch.set_num_threads(threads)


def main() -> None:
    args, shipped = start(__doc__)
    unet = reheaded(shipped)
    gap, scale = max_output_gap(unet, shipped)
    print(
        f"heads per block {shipped.config.attention_head_dim} -> {unet.config.attention_head_dim}; "
        f"max |reheaded - shipped| before fine-tuning = {gap:.3f} (output scale {scale:.3f})"
    )
    print("one thread, median of 5 interleaved rounds:")
    time_side_by_side(
        {
            f"shipped ({shipped.config.attention_head_dim} heads)": shipped,
            f"reheaded ({CHANNELS_PER_HEAD} channels/head)": unet,
        }
    )
    del shipped
    finetune(unet, args, "rehead_log.jsonl")


if __name__ == "__main__":
    main()
