"""Quick oracle read-out of LoRA / CAT / DreamBooth settings on a toy concept (one training seed each).

    python benchmarks/regime_sweep.py --steps 300 --lr 3e-3 lora:0 cat:0.3 cat:1 cat:2 dreambooth:0
    python benchmarks/regime_sweep.py --targets to_q,to_k,to_v,to_out.0 --lr 1e-2 --steps 400 lora:0 cat:1

For each REGIME:LAMBDA[:NULL_SHARE[:ANCHOR]] (ANCHOR: TrainConfig.cat_anchor, concept or class) it trains one
adapter and prints, for 24 (--class-samples) samples of "a {class}"
and 16 of "a {trigger} {class}": the collapse rate (class samples the oracle reads as the concept), the normalised
colour entropy of the class samples, the identity rate (trigger samples read as the concept), and the ground-truth
preservation scores against the base model's samples from the same seeds: paired preservation (same colour and
shape), colour distance (total variation of the class colours) and the valid-sample rate. The base model's row
comes first. Used to choose the demo recipe (docs/results.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="REGIME:LAMBDA, e.g. lora:0 cat:1 dreambooth:0")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--targets", default="to_q,to_k,to_v,to_out.0,conv1,conv2")
    ap.add_argument("--concept", default="two_tone_circle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--class-samples", type=int, default=24, help="samples of 'a {class}' per model (more = less noisy entropy)"
    )
    ap.add_argument("--trigger-samples", type=int, default=16, help="samples of 'a {trigger} {class}' per model")
    ap.add_argument("--class-images", type=int, default=50, help="class images the base model draws for dreambooth/CAT")
    ap.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the base model's own)")
    ap.add_argument("--null-share", type=float, default=0.0, help="TrainConfig.cat_null_share for the cat runs")
    args = ap.parse_args()
    from catlab.config import ConceptConfig, TrainConfig
    from catlab.evaluation.metrics import colour_distance, colour_entropy, paired_preservation, valid_rate
    from catlab.models import load_base, load_lora, set_active_adapters
    from catlab.sampling.sampler import generate
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.oracle import read_images
    from catlab.toyworld.world import COLOUR_NAMES, CONCEPTS, export_concept

    c = CONCEPTS[args.concept]
    root = Path(tempfile.mkdtemp(prefix="catlab-sweep-"))
    export_concept(args.concept, root / "concept")
    oracle, pipe = load_oracle(), load_base("toyworld")

    base_reading = []

    def read_out(label: str, extra: str = "") -> None:
        steps = {"num_inference_steps": args.sample_steps} if args.sample_steps else {}
        cls = generate(pipe, [f"a {c.class_word}"], list(range(args.class_samples)), progress=False, **steps)[0]
        trg = generate(
            pipe, [f"a {c.trigger} {c.class_word}"], list(range(args.trigger_samples)), progress=False, **steps
        )[0]
        rc, rt = read_images(oracle, cls), read_images(oracle, trg)
        base = base_reading[0] if base_reading else rc
        base_reading.append(rc)
        paired = paired_preservation(list(zip(rc.colour, rc.shape)), list(zip(base.colour, base.shape)))
        valid = valid_rate(rc.shape, rc.shape_prob, c.class_word) / max(
            1e-9, valid_rate(base.shape, base.shape_prob, c.class_word)
        )
        print(
            f"{label:14s}{extra} collapse {np.mean([x == c.name for x in rc.concept]):.2f}  "
            f"entropy {colour_entropy(rc.colour, COLOUR_NAMES):.2f}  "
            f"identity {np.mean([x == c.name for x in rt.concept]):.2f}  paired {paired:.2f}  "
            f"colour-dist {colour_distance(rc.colour, base.colour, COLOUR_NAMES):.2f}  valid/base {valid:.2f}  "
            f"class colours {dict(Counter(rc.colour).most_common(4))}",
            flush=True,
        )

    print(
        f"concept {c.name}, {args.steps} steps, lr {args.lr}, rank {args.rank}, targets {args.targets}, seed {args.seed}"
    )
    set_active_adapters(pipe, None)
    read_out("base")
    for k, spec in enumerate(args.runs):
        regime, lam, *null = spec.split(":")
        t0 = time.time()
        res = TrainConfig(
            concepts=[ConceptConfig(str(root / "concept"), c.trigger, c.class_word)],
            output_dir=str(root / f"run{k}"),
            regime=regime,
            cat_lambda=float(lam),
            cat_null_share=float(null[0]) if null else args.null_share,
            cat_anchor=null[1] if len(null) > 1 else "concept",
            steps=args.steps,
            learning_rate=args.lr,
            rank=args.rank,
            batch_size=4,
            random_flip=False,
            checkpoint_every=0,
            validate_every=0,
            seed=args.seed,
            target_modules=args.targets.split(","),
            num_class_images=args.class_images,
            class_images_dir=str(root / "class_images"),
        )
        from catlab.training.loop import train

        out = train(res)
        load_lora(pipe, out.adapter_dir, f"run{k}")
        read_out(spec, f" ({time.time() - t0:.0f} s)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
