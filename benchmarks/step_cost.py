"""What a training step costs under each regime, measured side by side on the same batch.

    python benchmarks/step_cost.py [--batches 1,4,16] [--repeats 30] [--base toyworld] [--compile]
    python benchmarks/step_cost.py --sd15-gpu --compile   # SD-1.5-shaped UNet (random weights), 512 px, fp16, batch 1
    python benchmarks/step_cost.py --batches 1 --repeats 1 --loop-steps 0 --compile   # the tiny path: seconds on a CPU

UNet steps: each round runs every variant once, in turn, so machine noise hits all of them alike; the script
prints median step times and their ratio to plain LoRA, for each batch size. Forward + backward + AdamW step of
the LoRA parameters (fused on a CPU, as in training; one row measures torch's default one-tensor-at-a-time
AdamW); everything else (VAE, text encoder) is excluded because all regimes share it. `--compile` adds plain
LoRA and CAT through `torch.compile(unet)` (as `compile_unet: true` trains), and prints how long each one's first,
compiling call took. On a GPU each row also gives the peak memory, and the header names the card. Then whole steps of
`catlab.training.loop` (data, VAE, text, UNet, optimizer), the regimes alternated, and the cost of switching the
adapters off and on for CAT's base pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from catlab.models import adapters_disabled, add_lora, lora_parameters
from catlab.training.losses import CatTerm, cat_loss, prior_preservation_loss

CAT_FULL = "CAT (batched: 1 adapted fwd of 2B + 1 base fwd)"
PLAIN_COMPILED, CAT_COMPILED = "plain LoRA, torch.compile", "CAT (batched), torch.compile"


def make_unet(args):
    if args.sd15_gpu:
        from diffusers import UNet2DConditionModel

        cfg = dict(
            sample_size=64,
            cross_attention_dim=768,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8,
        )
        return UNet2DConditionModel(**cfg).to("cuda", torch.float16), 77, 768
    from catlab.models import load_base

    pipe = load_base(args.base)
    return pipe.unet, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim


def measure_unet_steps(unet, params, b: int, seq: int, dim: int, args) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per UNet step for each regime at batch b (and CUDA peak GiB); variants interleaved."""
    fused = True if unet.device.type == "cpu" else None  # as catlab.training.loop
    opt = torch.optim.AdamW(params, lr=1e-4, fused=fused)
    one_at_a_time = torch.optim.AdamW(params, lr=1e-4, foreach=False)  # torch's default on a CPU
    device, dtype = unet.device, unet.dtype
    c, s = unet.config.in_channels, unet.config.sample_size
    z = torch.randn(b, c, s, s, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (b,), device=device)
    cond = torch.randn(b, seq, dim, device=device, dtype=dtype)
    cond_free = torch.randn(b, seq, dim, device=device, dtype=dtype)
    target = torch.randn_like(z)
    z2, t2, cond2, target2 = (
        torch.cat([z, z]),
        torch.cat([t, t]),
        torch.cat([cond, cond_free]),
        torch.cat([target, target]),
    )
    h = max(1, b // 2)  # DreamBooth with prior_share 0.5: B instance rows + B/2 class rows
    z3, t3, cond3, target3 = z2[: b + h], t2[: b + h], cond2[: b + h], target2[: b + h]

    def step(fn, optimizer=opt):
        def run():
            with torch.autocast(device.type, dtype=torch.float16, enabled=args.sd15_gpu):
                terms = fn()
            terms.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    compiled = torch.compile(unet) if args.compile else None  # one compiled wrapper; each shape compiles once
    variants = {
        "plain LoRA": step(lambda: cat_loss(unet, z, t, cond, cond_free, target, lam=0.0)),
        CAT_FULL: step(lambda: cat_loss(unet, z, t, cond, cond_free, target, lam=1.0)),
        "CAT (separate passes, as the authors)": step(
            lambda: cat_loss(unet, z, t, cond, cond_free, target, lam=1.0, batched=False)
        ),
        "CAT on half the batch": step(
            lambda: cat_loss(unet, z, t, cond, cond_free, target, lam=1.0, term=CatTerm(share=0.5))
        ),
        "DreamBooth prior preservation (B instance + B class)": step(
            lambda: prior_preservation_loss(unet(z2, t2, encoder_hidden_states=cond2).sample, target2, b)
        ),
        f"DreamBooth, prior_share 0.5 (B instance + {h} class)": step(
            lambda: prior_preservation_loss(unet(z3, t3, encoder_hidden_states=cond3).sample, target3, b)
        ),
    }
    if fused:
        variants["plain LoRA, AdamW one tensor at a time (torch's CPU default)"] = step(
            lambda: cat_loss(unet, z, t, cond, cond_free, target, lam=0.0), one_at_a_time
        )
    if compiled is not None:  # CAT switches the adapters off for its target: the compiled UNet recompiles for that
        variants[PLAIN_COMPILED] = step(lambda: cat_loss(compiled, z, t, cond, cond_free, target, lam=0.0))
        variants[CAT_COMPILED] = step(lambda: cat_loss(compiled, z, t, cond, cond_free, target, lam=1.0))
    times: dict[str, list[float]] = {k: [] for k in variants}
    peak: dict[str, float] = {}
    for rnd in range(args.repeats + 2):
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated() / 2**30)
            if rnd == 0 and name in (PLAIN_COMPILED, CAT_COMPILED):
                print(f"  first call of {name!r} (compiling): {time.perf_counter() - t0:.1f} s")
            if rnd >= 2:  # warm-up rounds
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="toyworld")
    ap.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes for the UNet-step table")
    ap.add_argument("--batch", type=int, default=4, help="batch size of the whole-training-step measurement")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--amortise-every", type=int, default=5)
    ap.add_argument(
        "--loop-steps", type=int, default=40, help="steps per regime for the whole-training-step measurement (0: skip)"
    )
    ap.add_argument("--sd15-gpu", action="store_true")
    ap.add_argument("--compile", action="store_true", help="add plain LoRA and CAT through torch.compile(unet)")
    args = ap.parse_args()
    torch.manual_seed(0)
    unet, seq, dim = make_unet(args)
    n_params_before = sum(p.numel() for p in unet.parameters())
    add_lora(unet, rank=4)
    if args.sd15_gpu:
        for p in lora_parameters(unet):
            p.data = p.data.float()
    params = lora_parameters(unet)
    batches = [1] if args.sd15_gpu else [int(x) for x in args.batches.split(",")]
    k = args.amortise_every
    print(
        f"UNet step: {device_name(unet.device)}, dtype {unet.dtype}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {args.repeats} interleaved rounds, median step time and ratio to plain LoRA"
    )
    for b in batches:
        med, peak = measure_unet_steps(unet, params, b, seq, dim, args)
        base = med["plain LoRA"]
        med[f"amortised CAT (every {k}-th step), average step"] = (med[CAT_FULL] + (k - 1) * base) / k
        print(f" batch {b}")
        for name, v in med.items():
            mem = f"   peak {peak[name]:.2f} GiB" if name in peak else ""
            print(f"  {name:55s} {1000 * v:8.1f} ms   {v / base:5.2f}x plain{mem}")
    n_params_after = sum(p.numel() for p in unet.parameters())
    lora_n = sum(p.numel() for p in params)
    print(
        f"UNet parameters: {n_params_before:,} base + {lora_n:,} LoRA = {n_params_after:,} held during every step "
        f"(one UNet: the base prediction uses the same weights with adapters disabled)"
    )
    measure_toggle(unet)
    if args.loop_steps and not args.sd15_gpu:
        measure_training_loop(args)


def device_name(device: torch.device) -> str:
    """The card's name (timings only compare on the same one), or the CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


def measure_toggle(unet, rounds: int = 200) -> None:
    """CAT switches the adapters off and on again every step: catlab's per-layer switch vs diffusers' model-level one."""

    def catlab_switch():
        with adapters_disabled(unet):
            pass

    def diffusers_switch():
        unet.disable_adapters()
        unet.enable_adapters()

    times: dict[str, list[float]] = {"catlab adapters_disabled": [], "diffusers disable_adapters + enable_adapters": []}
    for _ in range(rounds):
        for name, fn in zip(times, (catlab_switch, diffusers_switch)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["diffusers disable_adapters + enable_adapters"])
    print("adapters off and on again (once per CAT step), median of", rounds)
    for name, v in times.items():
        print(f"  {name:55s} {1e6 * statistics.median(v):8.0f} us   {statistics.median(v) / ref:5.2f}x diffusers")


def measure_training_loop(args) -> None:
    """Whole steps of catlab.training.loop (data, VAE encoding, text, UNet, optimizer), regimes alternated three times."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from catlab.config import ConceptConfig, TrainConfig
    from catlab.toyworld.world import export_concept
    from catlab.training.loop import train

    tmp = Path(tempfile.mkdtemp())
    export_concept("two_tone_circle", tmp / "concept")
    regimes = {
        "plain LoRA": dict(regime="lora"),
        "CAT": dict(regime="cat"),
        f"CAT every {args.amortise_every}": dict(regime="cat", cat_every=args.amortise_every),
        "DreamBooth-LoRA": dict(regime="dreambooth", num_class_images=8, class_images_dir=str(tmp / "class")),
        "DreamBooth-LoRA, prior_share 0.5": dict(
            regime="dreambooth", num_class_images=8, class_images_dir=str(tmp / "class"), prior_share=0.5
        ),
    }
    step_s: dict[str, list[float]] = {k: [] for k in regimes}
    for rnd in range(4):  # round 0 warms up (oneDNN kernels, text cache) and is not counted
        for k, (name, kw) in enumerate(regimes.items()):
            cfg = TrainConfig(
                concepts=[ConceptConfig(str(tmp / "concept"), "sks", "circle")],
                output_dir=str(tmp / f"round{rnd}_regime{k}"),
                steps=args.loop_steps,
                batch_size=args.batch,
                checkpoint_every=0,
                validate_every=0,
                base_model=args.base,
                **kw,
            )
            with contextlib.redirect_stderr(io.StringIO()):  # sixteen progress bars would bury the table
                times = [h["step_s"] for h in train(cfg).history[2:]]
            if rnd:
                step_s[name] += times
    # the mean, not the median: an amortised run's dear steps are a minority that a median would hide
    base = statistics.mean(step_s["plain LoRA"])
    print(
        f"whole training steps (catlab.training.loop, batch {args.batch}, {args.loop_steps} steps x 3 alternating runs "
        "each), mean step time"
    )
    for name, v in step_s.items():
        print(f"  {name:55s} {1000 * statistics.mean(v):8.1f} ms   {statistics.mean(v) / base:5.2f}x plain")


if __name__ == "__main__":
    main()
