"""How far CAT's term reaches: does it hold only the prompts whose images it looks at?

    python benchmarks/anchor_reach.py [--out runs/anchor_reach] [--concept circle_on_navy] [--seeds 0,1,2]
        [--anchors "a square,a star" --anchors "a square,a star,a triangle"] [--anchor-share 1.0] [--anchor-lambda 8] [--quick]

CAT with the demo's recipe (DemoRecipe) is trained once with its term on the base model's images of the concept's
class only (as the demo), and once per --anchors set with the base model's images of those prompts added to the class
images (`TrainConfig.anchor_prompts`: the same number of anchor rows per step, spread over more prompts). Each
adapter draws the concept's trigger, its class and every prompt no concept names (the world's other classes, the class
on a dark background) on the base model's seeds; the table gives, per anchor set and prompt, paired preservation
against the base model (mean over training seeds), with identity and fidelity beside it. A prompt kept only when it
is among the anchors says the term holds what it looks at and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from multi_concept import train_missing  # the neighbouring benchmark's runner: two runs at a time, reused when done

DEFAULT_ANCHORS = ("a square,a star", "a square,a star,a triangle")  # the triangle held out, then in


def _name(anchors: tuple[str, ...], changes: dict) -> str:
    name = "class only" if not anchors else "+ " + ", ".join(a.removeprefix("a ") for a in anchors)
    return name + "".join(f" ({k} {v:g})" for k, v in changes.items())


def _config(out: Path, concept: str, seed: int, anchors: tuple[str, ...], quick: bool, fields: dict):
    """(the run's TrainConfig, its name in the table). `fields` change the recipe for anchored runs; a field at the
    recipe's own value changes nothing and is left out of the name."""
    from catlab.config import ConceptConfig
    from catlab.demo.recipe import DemoRecipe
    from catlab.toyworld.world import CONCEPTS

    c = CONCEPTS[concept]
    recipe = DemoRecipe.quick() if quick else DemoRecipe()
    slug = "_".join(a.replace(" ", "-") for a in anchors) or "class_only"
    cfg = recipe.train_config("cat", seed, ConceptConfig(str(out / "concept"), c.trigger, c.class_word), out)
    changes = {k: v for k, v in fields.items() if v is not None and anchors and v != getattr(cfg, k)}
    run = slug + "".join(f"_{k.removeprefix('cat_')}{v:g}" for k, v in changes.items())
    cfg = replace(cfg, **changes, anchor_prompts=list(anchors), output_dir=str(out / "runs" / f"{run}_seed{seed}"),
                  class_images_dir=str(out / "class_images" / slug))  # fmt: skip
    return cfg, f"{_name(anchors, changes)} s{seed}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/anchor_reach")
    ap.add_argument("--concept", default="circle_on_navy")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--anchors", action="append", help="comma-separated prompts (repeatable)")
    ap.add_argument("--anchor-share", type=float, action="append",
                    help="cat_share of the anchored runs (repeatable; default: the recipe's, 0.5): more anchor rows per "
                    "step, so the concept's class keeps as many as before")  # fmt: skip
    ap.add_argument("--anchor-lambda", type=float, action="append",
                    help="cat_lambda of the anchored runs (repeatable; default: the recipe's, 4)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a few steps and seeds: checks the plumbing only")
    args = ap.parse_args()
    from catlab.demo.recipe import QUICK_SAMPLE_STEPS
    from catlab.evaluation.held_out import other_classes, preservation_by_prompt
    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.protocol import evaluate
    from catlab.evaluation.scoring import Scorers
    from catlab.evaluation.summary import per_seed_scores
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.world import CONCEPTS, export_concept

    if args.concept not in CONCEPTS:
        raise SystemExit(f"--concept {args.concept!r}: choose one of {sorted(CONCEPTS)}")
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    anchor_sets = [()] + [tuple(p.strip() for p in a.split(",") if p.strip()) for a in args.anchors or DEFAULT_ANCHORS]
    if not (out / "concept").is_dir():
        export_concept(args.concept, out / "concept")
    variants = [((), {})] + [
        (a, {"cat_share": share, "cat_lambda": lam})
        for a in anchor_sets[1:]
        for share in args.anchor_share or [None]
        for lam in args.anchor_lambda or [None]
    ]
    runs = {}  # name in the table -> TrainConfig; a variant named twice is one run
    for anchors, fields in variants:
        for seed in seeds:
            cfg, name = _config(out, args.concept, seed, anchors, args.quick, fields)
            runs[name] = cfg
    train_missing(list(runs.values()))
    class_word = CONCEPTS[args.concept].class_word
    n = (2, 1, 1) if args.quick else (48, 24, 8)
    sampling = EvalSampling(templates=("a {trigger} {class}",), seeds=n[0], trigger_seeds=n[1], held_out_seeds=n[2],
                            num_inference_steps=QUICK_SAMPLE_STEPS if args.quick else None,
                            held_out=(*other_classes(class_word), "a {class} on a dark background"), workers=2)  # fmt: skip
    adapters = {name: Path(cfg.output_dir) / "adapter" for name, cfg in runs.items()}
    result = evaluate("toyworld", adapters, args.concept, sampling=sampling, scorers=Scorers(oracle=load_oracle()),
                      out_dir=out / "eval")  # fmt: skip
    family = {name: name.rsplit(" s", 1)[0] for name in adapters} | {"base": "base"}
    by_prompt = preservation_by_prompt(result.per_image, family_of=family.get)
    table = by_prompt.pivot_table(index="method", columns="prompt", values="paired_preservation", sort=False)
    scores = per_seed_scores(result.per_image).assign(family=lambda d: d["method"].map(family))
    table = table.join(scores.groupby("family")[["identity_acc", "fidelity"]].mean())
    print(f"\nCAT on {args.concept}, training seeds {seeds}: paired preservation per prompt, identity, fidelity")
    print(table.round(2).to_string())
    table.to_csv(out / "table.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
