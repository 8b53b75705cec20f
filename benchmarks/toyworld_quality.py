"""Quality bars of the shipped toy world, measured with the oracle. Exits non-zero if a bar is missed.

    python benchmarks/toyworld_quality.py                  # the shipped assets, their default sampler settings
    python benchmarks/toyworld_quality.py --sweep 1 1.5 2 3 # also compare guidance scales

Bars: prompt following ("a {colour} {shape}", >= 200 samples): shape and colour accuracy >= 90%; class prompts
("a {shape}") cover >= 6 of 8 colours with normalised colour entropy >= 0.8; toy CLIP zero-shot shape and colour
accuracy on held-out drawn images >= 90%; loading the pipeline and sampling 16 images (25 steps, CFG) <= 15 s.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch


def prompt_following(pipe, oracle, seeds: int, guidance: float | None) -> dict:
    from catlab.evaluation.metrics import colour_entropy
    from catlab.sampling.sampler import generate
    from catlab.toyworld.oracle import read_images
    from catlab.toyworld.world import COLOUR_NAMES, SHAPES

    pairs = list(itertools.product(COLOUR_NAMES, SHAPES))
    imgs = generate(pipe, [f"a {c} {s}" for c, s in pairs], list(range(seeds)), guidance_scale=guidance, batch_size=64)
    r = read_images(oracle, [im for row in imgs for im in row])
    want = [(c, s) for c, s in pairs for _ in range(seeds)]
    out = {
        "n_colour_shape": len(want),
        "shape_acc": float(np.mean([a == s for a, (_, s) in zip(r.shape, want)])),
        "colour_acc": float(np.mean([a == c for a, (c, _) in zip(r.colour, want)])),
    }
    cls = generate(
        pipe, [f"a {s}" for s in SHAPES], list(range(100, 100 + 8 * seeds)), guidance_scale=guidance, batch_size=64
    )
    per_shape = []
    for s, row in zip(SHAPES, cls):
        rr = read_images(oracle, row)
        per_shape.append(
            {
                "shape": s,
                "shape_acc": float(np.mean([a == s for a in rr.shape])),
                "n_colours": len(set(rr.colour)),
                "colour_entropy": colour_entropy(rr.colour, COLOUR_NAMES),
            }
        )
    out["class_prompts"] = per_shape
    out["class_min_colours"] = min(p["n_colours"] for p in per_shape)
    out["class_min_entropy"] = min(p["colour_entropy"] for p in per_shape)
    return out


@torch.no_grad()
def clip_zero_shot(n: int = 400) -> dict:
    from catlab.evaluation.embedders import load_embedder
    from catlab.toyworld.world import COLOUR_NAMES, SHAPES, draw_shape, make_world_dataset

    emb = load_embedder("toyworld")
    _, specs = make_world_dataset(n, seed=424242)  # a seed the pretraining never used
    images = [draw_shape(s) for s in specs]
    x = emb.embed_images(images)  # (n, D)
    shape_text = emb.embed_texts([f"a {s}" for s in SHAPES])
    colour_text = np.stack(
        [emb.embed_texts([f"a {c} {s}" for s in SHAPES]).mean(0) for c in COLOUR_NAMES]
    )  # prompt ensemble
    shape_pred = (x @ shape_text.T).argmax(1)
    colour_pred = (x @ colour_text.T).argmax(1)
    return {
        "clip_shape_acc": float(np.mean([SHAPES[i] == s.shape for i, s in zip(shape_pred, specs)])),
        "clip_colour_acc": float(np.mean([COLOUR_NAMES[i] == s.colour for i, s in zip(colour_pred, specs)])),
    }


def load_and_sample_seconds() -> float:
    t0 = time.perf_counter()
    from catlab.models import load_base
    from catlab.sampling.sampler import generate

    pipe = load_base("toyworld")
    generate(
        pipe,
        ["a red circle", "a star", "a blue square", "a triangle"],
        list(range(4)),
        num_inference_steps=25,
        progress=False,
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8, help="samples per colour-shape prompt (32 prompts)")
    ap.add_argument("--sweep", type=float, nargs="*", default=[], help="extra guidance scales to compare")
    args = ap.parse_args()
    from catlab.models import load_base, sampling_defaults
    from catlab.toyworld.assets import load_oracle

    secs = load_and_sample_seconds()
    pipe, oracle = load_base("toyworld"), load_oracle()
    default_g = sampling_defaults(pipe)["guidance_scale"]
    print(f"sampler: {sampling_defaults(pipe)}")
    results = {}
    for g in [default_g] + [g for g in args.sweep if g != default_g]:
        results[g] = prompt_following(pipe, oracle, args.seeds, g)
        r = results[g]
        print(
            f"guidance {g}: shape acc {r['shape_acc']:.3f}, colour acc {r['colour_acc']:.3f} over {r['n_colour_shape']} samples; "
            f"class prompts: "
            + ", ".join(
                f"{p['shape']} {p['n_colours']} colours H={p['colour_entropy']:.2f} shape acc {p['shape_acc']:.2f}"
                for p in r["class_prompts"]
            )
        )
    clip = clip_zero_shot()
    r = results[default_g]
    bars = {
        "prompt following: shape accuracy >= 0.90": r["shape_acc"] >= 0.90,
        "prompt following: colour accuracy >= 0.90": r["colour_acc"] >= 0.90,
        "class prompts cover >= 6 of 8 colours": r["class_min_colours"] >= 6,
        "class prompts: normalised colour entropy >= 0.8": r["class_min_entropy"] >= 0.8,
        "toy CLIP zero-shot shape accuracy >= 0.90": clip["clip_shape_acc"] >= 0.90,
        "toy CLIP zero-shot colour accuracy >= 0.90": clip["clip_colour_acc"] >= 0.90,
        "load + sample 16 images (25 steps, CFG) <= 15 s": secs <= 15,
    }
    print(
        f"toy CLIP zero-shot: shape {clip['clip_shape_acc']:.3f}, colour {clip['clip_colour_acc']:.3f}; load + 16 samples: {secs:.1f} s"
    )
    for name, ok in bars.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
