"""What Stable Diffusion 1.5 costs in GPU memory along catlab's own paths, printed beside a Colab T4's 15 GiB.

    python benchmarks/sd15_gpu_check.py --out runs/sd15_gpu_check          # a CUDA GPU: a few minutes on an H100
    python benchmarks/sd15_gpu_check.py --tiny --out runs/sd15_gpu_check   # the same stages with tiny models, a CPU

The pipeline has SD 1.5's real shapes (tests/sd15_layout.py: UNet 860 M parameters, VAE, CLIP-L-shaped text
encoder) and random weights, saved and loaded by path, so the numbers are what the code costs, not what it draws.
`--tiny` uses the same layout at tiny widths (tests/sd15_tiny.py) and checks that every stage runs; its numbers
mean nothing. Stages, each isolated (a failure is recorded and the rest go on):

- train_*: `catlab.train` at the native 512 px, fp16, batch 1, rank 1, in a fresh process each: CAT, CAT with the
  guided term (`cat_guidance: 3`), CAT with gradient checkpointing; median step time after warm-up and the peak;
- class_images: a DreamBooth run of 2 steps that draws 8 class images first (the training loop's own path);
- generate_*: `catlab.sampling.generate` of 16 and 32 images in one pipeline call, fp32 and fp16, with and without
  VAE slicing, then catlab's defaults on this device (`load_for_sampling`, `generate`'s default batch);
- notebook_*: 02_train.ipynb's before/after grid (2 prompts x 8 seeds, base and adapter) loaded as the notebook
  loaded it until now (`load_base`, fp32) and through `load_for_sampling`.

Peaks are torch's `max_memory_allocated` after a reset; the CUDA context (about 0.5 GiB, estimated) comes on top.
Results: OUT/results.json and the table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T4_GIB = 15.0  # what Colab reports for a T4 (15,360 MiB); an L4 and most 24 GB cards give about 22-23.6 GiB
CUDA_CONTEXT_GIB = 0.5  # estimated: the CUDA context and kernels, not counted by max_memory_allocated
GENERATE_STEPS = 4  # sampling steps in the generate stages: the peak does not depend on them, the time does
BATCHES = (16, 32)  # images per pipeline call in the generate stages (4 and 8 with --tiny, to finish in minutes)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", default="runs/sd15_gpu_check", help="folder for results.json (default: runs/sd15_gpu_check)"
    )
    ap.add_argument("--work", default=None, help="folder for the pipeline, concept and runs (default: OUT/work)")
    ap.add_argument("--tiny", action="store_true", help="tiny models on a CPU: checks that every stage runs")
    ap.add_argument("--train-steps", type=int, default=None, help="steps per training run (default: 20; 4 with --tiny)")
    ap.add_argument("--only", default=None, help="comma-separated stage prefixes to run, e.g. 'generate,notebook'")
    return ap.parse_args(argv)


class Check:
    """The results so far, written to results.json after every stage."""

    def __init__(self, out: Path, tiny: bool, only: str | None):
        self.out, self.tiny, self.rows = out, tiny, []
        self.only = [s.strip() for s in only.split(",")] if only else None
        self.out.mkdir(parents=True, exist_ok=True)

    def wanted(self, name: str) -> bool:
        return self.only is None or any(name.startswith(p) for p in self.only)

    def run(self, name: str, fn, *args, **kwargs) -> dict | None:
        """Run one stage; record its numbers or its error, and go on."""
        if not self.wanted(name):
            return None
        t0 = time.time()
        try:
            row = {"stage": name, "ok": True, **(fn(*args, **kwargs) or {})}
        except Exception as e:  # noqa: BLE001  (any failure is a result: record it and run the other stages)
            oom = "out of memory" in str(e).lower()
            error = "CUDA out of memory" if oom else f"{type(e).__name__}: {e}"[-1500:]
            row = {"stage": name, "ok": False, "error": error, "traceback": traceback.format_exc()[-3000:]}
        row["wall_s"] = round(time.time() - t0, 1)
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k != "traceback"}
        print(f"== {name}: {json.dumps(shown, default=str)[:600]}", flush=True)
        results = {"tiny": self.tiny, "rows": self.rows}
        (self.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        return row


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@contextmanager
def peak_memory():
    """Yields a dict that gets 'peak_gib' (CUDA only) and 's' for the block."""
    import torch

    rec: dict = {}
    if cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    yield rec
    if cuda():
        torch.cuda.synchronize()
        rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    rec["s"] = round(time.perf_counter() - t0, 2)


def build_pipeline(folder: Path, tiny: bool) -> dict:
    """SD 1.5's layout with random weights (or its tiny twin), saved where every stage loads it by path."""
    sys.path.insert(0, str(ROOT / "tests"))
    if tiny:
        from sd15_tiny import build_tiny_sd15_pipeline

        build_tiny_sd15_pipeline().save_pretrained(folder)
    else:
        from sd15_layout import save_sd15_pipeline

        save_sd15_pipeline(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return {"resolution": unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)}


def make_concept(folder: Path, resolution: int) -> dict:
    """Five two-tone discs at the native resolution: a concept folder the data checks accept."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        im = Image.new("RGB", (resolution, resolution), (235, 235, 235))
        r, c = resolution * (0.28 + 0.03 * i), resolution / 2
        ImageDraw.Draw(im).pieslice([c - r, c - r, c + r, c + r], 90, 270, fill=(255, 80, 200))
        ImageDraw.Draw(im).pieslice([c - r, c - r, c + r, c + r], 270, 90, fill=(40, 220, 230))
        im.save(folder / f"img_{i}.png")
    return {"images": 5}


TRAIN_CODE = """
import json, statistics, sys, torch
from catlab import train
from catlab.config import TrainConfig
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
r = train(cfg, progress=False)
steps = [h['step_s'] for h in r.history]
warm = steps[5:] or steps
print('RESULT', json.dumps({'median_step_ms': round(1000 * statistics.median(warm), 1),
      'peak_gib': round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
      'class_images_s': round(r.class_images_s, 1), 'wall_s': round(r.wall_time_s, 1)}))
"""


def train_run(work: Path, name: str, base: Path, concept: Path, tiny: bool, steps: int, **over) -> dict:
    """catlab.train in a fresh process (its own peak); median step time after 5 warm-up steps."""
    cfg = dict(
        base_model=str(base),
        concepts=[dict(folder=str(concept), trigger="sks", class_word="circle")],
        output_dir=str(work / "runs" / name),
        rank=1,
        learning_rate=1e-4,
        batch_size=1,
        steps=steps,
        checkpoint_every=0,
        validate_every=0,
        mixed_precision="no" if tiny else "fp16",
        log_every=1,
    )
    cfg.update(over)
    shutil.rmtree(cfg["output_dir"], ignore_errors=True)  # this script's own scratch run from an earlier check
    p = subprocess.run([sys.executable, "-c", TRAIN_CODE, json.dumps(cfg)], capture_output=True, text=True, timeout=600)
    (work / f"train_{name}.log").write_text(p.stdout[-5000:] + "\n" + p.stderr[-10000:])
    result = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not result:
        raise RuntimeError(f"rc {p.returncode}: {p.stderr[-1500:]}")
    return json.loads(result[-1][len("RESULT ") :])


def generate_batch(pipe, n: int, sliced: bool) -> dict:
    """`generate` of n images in one pipeline call, with the VAE decoding them all at once or one at a time."""
    import catlab.sampling.sampler as sampler

    switch = sampler.enable_vae_slicing
    if not sliced:
        pipe.vae.disable_slicing()
        sampler.enable_vae_slicing = lambda pipe: None  # generate slices on CUDA by itself; this stage measures without
    try:
        with peak_memory() as rec:
            sampler.generate(
                pipe, ["a sks circle"], list(range(n)), batch_size=n, num_inference_steps=GENERATE_STEPS, progress=False
            )
    finally:
        sampler.enable_vae_slicing = switch
    rec["dtype"] = str(pipe.unet.dtype)
    return rec


def release(pipe) -> None:
    """Free a pipeline's GPU memory before the next stage loads another."""
    import gc

    import torch

    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_stages(check: Check, base: Path, batches: tuple[int, int]) -> None:
    """16 and 32 images per call, fp32 and fp16, VAE slicing off and on; then catlab's own defaults."""
    import torch

    from catlab.models import load_base, load_for_sampling
    from catlab.sampling.sampler import generate

    device = "cuda" if cuda() else "cpu"
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16 if cuda() else torch.float32)):
        if not any(check.wanted(f"generate_{label}_{n}_{s}") for n in batches for s in ("sliced", "whole")):
            continue
        pipe = load_base(str(base), device=device, dtype=dtype)
        for n in batches:
            for sliced in (False, True):
                check.run(f"generate_{label}_{n}_{'sliced' if sliced else 'whole'}", generate_batch, pipe, n, sliced)
        release(pipe)

    def defaults() -> dict:
        pipe = load_for_sampling(str(base))
        with peak_memory() as rec:
            generate(
                pipe,
                ["a sks circle", "a circle"],
                list(range(batches[-1] // 2)),
                num_inference_steps=GENERATE_STEPS,
                progress=False,
            )
        rec.update(dtype=str(pipe.unet.dtype), vae_slicing=bool(pipe.vae.use_slicing))
        release(pipe)
        return rec

    check.run(f"generate_defaults_{batches[-1]}", defaults)


def notebook_path(base: Path, adapter: Path, how: str) -> dict:
    """02_train.ipynb's before/after grid: base and adapter, 2 prompts x 8 seeds, with catlab's default batch."""
    import torch

    from catlab.models import load_base, load_for_sampling, load_lora
    from catlab.widgets.method_grids import generate_methods

    if not adapter.is_dir():
        raise FileNotFoundError(f"{adapter}: the train_cat stage wrote no adapter; run it first")
    with peak_memory() as rec:
        if how == "load_base_fp32":  # the notebook's cell until now
            pipe = load_base(str(base), device="cuda" if torch.cuda.is_available() else None)
        else:
            pipe = load_for_sampling(str(base))
        load_lora(pipe, adapter, "trained")
        methods = {"base": None, "adapter": (["trained"], [1.0])}
        prompts = ["a sks circle", "a circle"]
        generate_methods(pipe, methods, prompts, list(range(8)), num_inference_steps=GENERATE_STEPS)
    rec["dtype"] = str(pipe.unet.dtype)
    release(pipe)
    return rec


def table(rows: list[dict]) -> str:
    """One line per stage: time, peak, and whether peak + CUDA context fits a T4."""
    t4 = f"T4 ({T4_GIB:.0f} GiB, +{CUDA_CONTEXT_GIB} context)"
    lines = [f"{'stage':34s} {'ms/step or s':>13s} {'peak GiB':>9s}  {t4}"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['stage']:34s} {'':>13s} {'':>9s}  FAILED: {r['error'][:70]}")
            continue
        timing = r.get("class_images_s") if r["stage"] == "class_images" else r.get("median_step_ms", r.get("s", ""))
        peak = r.get("peak_gib")
        fits = "n/a (no GPU)" if peak is None else "fits" if peak + CUDA_CONTEXT_GIB <= T4_GIB else "OVER"
        lines.append(f"{r['stage']:34s} {timing!s:>13s} {'-' if peak is None else peak:>9}  {fits}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    check = Check(out, args.tiny, args.only)
    steps = args.train_steps or (4 if args.tiny else 20)
    base, concept = work / "sd15_layout", work / "concept"
    if not (base / "model_index.json").is_file():
        built = check.run("build_pipeline", build_pipeline, base, args.tiny) or {}
    else:
        built = {}
    resolution = built.get("resolution") or (64 if args.tiny else 512)
    if not concept.is_dir():
        make_concept(concept, resolution)
    for name, over in (
        ("cat", {"regime": "cat"}),
        ("cat_guided", {"regime": "cat", "cat_guidance": 3.0}),
        ("cat_gradient_checkpointing", {"regime": "cat", "gradient_checkpointing": True}),
    ):
        check.run(f"train_{name}", train_run, work, name, base, concept, args.tiny, steps, **over)
    check.run(
        "class_images",
        train_run,
        work,
        "class_images",
        base,
        concept,
        args.tiny,
        2,
        regime="dreambooth",
        num_class_images=8,
    )
    generate_stages(check, base, tuple(n // 4 for n in BATCHES) if args.tiny else BATCHES)
    for how in ("load_base_fp32", "load_for_sampling"):
        check.run(f"notebook_{how}", notebook_path, base, work / "runs" / "cat" / "adapter", how)
    print(table(check.rows))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
