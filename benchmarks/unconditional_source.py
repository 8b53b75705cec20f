"""Where does a concept live? Sample the same adapters with guidance's unconditional branch adapted, then from the base.

    python benchmarks/headline.py --concepts bronze_star --out runs/headline        # a demo folder first (or catlab demo)
    python benchmarks/unconditional_source.py runs/headline/bronze_star --variant cat_null_share=0
    python benchmarks/unconditional_source.py runs/huge_s3 --new huge_circle --first-seed 3 --variant regime=lora,rank=8

For each adapter of a demo folder (plain LoRA, DreamBooth-LoRA and CAT per training seed) and each extra CAT variant
(FIELD=VALUE,... over the demo's CAT recipe, trained here on the demo's seeds, two runs at a time), it scores the
demo protocol twice: once as every pipeline samples (both branches of classifier-free
guidance through the adapter) and once with the unconditional branch from the base model
(`catlab.sampling.guidance`). It prints the oracle's identity, collapse, paired preservation, colour distance and
valid-sample rate, mean ± std over training seeds, and the ratio of identity base/adapted side by side.
`--new CONCEPT` starts a folder of its own instead of a demo's: the demo's recipe and sampling, the concept exported,
no demo runs, so only the variants are trained and scored beside the base model (and a variant may be
`regime=lora,...` or `regime=cat,...`: the two halves of a claim, at a fraction of a demo's time).

A concept an adapter holds in caption-aware layers (cross-attention) survives the base model's unconditional
branch, or grows: guidance then amplifies all of it. A concept held in caption-blind layers (self-attention) moves
ε(∅) as much as ε(prompt); guidance only draws it while ε(∅) moves with it, and the base model's ε(∅) erases it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import sys
from pathlib import Path

COLUMNS = {
    "identity_acc_mean": "identity",
    "collapse_rate_mean": "collapse",
    "paired_preservation_mean": "paired",
    "colour_distance_mean": "colour dist.",
    "valid_rate_mean": "valid",
    "fidelity_mean": "fidelity",
    "colour_fidelity_mean": "colour fid.",
    "trigger_colour_distance_mean": "trig. colour dist.",
    "position_fidelity_mean": "position fid.",
    "fidelity_leak_mean": "leak (fid.)",
}


def parse_variant(spec: str) -> dict:
    """ "cat_null_share=0,cat_anchor=class" -> a CAT run's TrainConfig fields over the demo recipe, named after the spec."""
    from catlab.config import TrainConfig

    defaults, fields = TrainConfig(), {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in TrainConfig.__dataclass_fields__ or not value:
            raise SystemExit(
                f"--variant {spec!r}: {item!r} is not FIELD=VALUE with FIELD a TrainConfig field (e.g. cat_null_share=0)"
            )
        default = getattr(defaults, key)
        # a list field takes its items joined by "+" (target_modules=attn2.to_k+attn2.to_v); a field whose default
        # is None takes text (class_prompt=a circle)
        if isinstance(default, list):
            fields[key] = value.split("+")
        else:
            fields[key] = value if default is None else type(default)(value)
    return {
        "name": "v_" + "_".join(f"{k.removeprefix('cat_')}{_spelt(v)}" for k, v in fields.items()).replace(".", "p"),
        "fields": fields,
    }


def _spelt(value) -> str:
    return ("+".join(map(str, value)) if isinstance(value, list) else str(value)).replace(" ", "-")


def _recipe_train(recipe: dict) -> dict:
    """The TrainConfig overrides a demo's recipe.json records (catlab 0.3: under "train"; before: at the top level)."""
    from catlab.config import TrainConfig

    flat = recipe.get("train", recipe)
    return {k: v for k, v in flat.items() if k in TrainConfig.__dataclass_fields__}


def _recipe_seeds(recipe: dict) -> tuple[int, int]:
    """(class-prompt seeds, trigger-prompt seeds) a demo's recipe.json records (either layout)."""
    if "sampling" in recipe:
        return recipe["sampling"]["seeds"], recipe["sampling"]["trigger_seeds"] or recipe["sampling"]["seeds"]
    return recipe["eval_seeds"], recipe.get(
        "eval_trigger_seeds", recipe["eval_seeds"]
    )  # older folders: one count for both


def start_folder(folder: Path, concept: str, first_seed: int, n_seeds: int) -> dict:
    """A folder for variants alone: recipe.json as `catlab demo` writes it (the demo's recipe) and the concept's
    photos; no demo runs. Returns the recipe.json it wrote."""
    from catlab.demo.recipe import DemoRecipe
    from catlab.files import write_json_atomic
    from catlab.toyworld.world import export_concept, toy_concept

    try:
        toy_concept(concept)
    except ValueError as e:
        raise SystemExit(f"--new: {e}") from None
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"--new: {folder} already holds files; pass a new folder, or leave out --new to reuse it")
    written = {**DemoRecipe().to_json(), "n_seeds": n_seeds, "first_seed": first_seed, "concept": concept}
    export_concept(concept, folder / "concept")
    write_json_atomic(folder / "recipe.json", written)
    return json.loads((folder / "recipe.json").read_text())


def claim_pairs(variants: list[dict], ran_methods: list[str]) -> list[tuple[str, str, str]]:
    """(what, plain LoRA's setting, CAT's setting) for each pair the faithful-CAT claim compares: the demo's own
    (lora, cat), and each variant `regime=lora,X` beside a variant `X` (the same recipe change for both methods), or
    beside `X,cat_...`: CAT's own fields (λ, its schedule, the term's share) do not touch plain LoRA's training."""
    pairs = [("the demo's recipe", "lora", "cat")] if {"lora", "cat"} <= set(ran_methods) else []
    for lora in variants:
        if lora["fields"].get("regime") != "lora":
            continue
        change = {k: v for k, v in lora["fields"].items() if k != "regime"}
        for cat in variants:
            fields = {k: v for k, v in cat["fields"].items() if k != "regime"}
            cat_only = {k: v for k, v in fields.items() if k.startswith("cat_") and k not in change}
            if (
                cat["fields"].get("regime", "cat") == "cat"
                and {k: v for k, v in fields.items() if k not in cat_only} == change
            ):
                what = ", ".join(f"{k}={_spelt(v)}" for k, v in change.items()) or "the folder's recipe, as variants"
                if cat_only:
                    what += " (CAT also " + ", ".join(f"{k}={_spelt(v)}" for k, v in cat_only.items()) + ")"
                pairs.append((what, lora["name"], cat["name"]))
    return pairs


def pair_claims(mean, lora: str, cat: str) -> list[tuple[str, bool]]:
    """The faithful-CAT bars (benchmarks/headline.py) on one pair of rows of a table of means over training seeds:
    plain LoRA learns the concept (identity >= 0.7), CAT's identity and fidelity >= 0.9x its, collapse <= 0.05,
    paired preservation >= 0.8, colour distance <= 0.1. For a concept the oracle was not trained on (empty identity)
    the pixels stand in: fidelity for identity (stricter: every attribute right) and fidelity's leak for collapse."""
    import pandas as pd
    from headline import check_faithful

    names = {"identity": "identity_acc", "collapse": "collapse_rate", "paired": "paired_preservation",
             "colour dist.": "colour_distance", "fidelity": "fidelity"}  # fmt: skip
    held_out = mean.loc[[lora, cat], "identity"].isna().all() and "leak (fid.)" in mean
    if held_out:
        mean = mean.assign(identity=mean["fidelity"], collapse=mean["leak (fid.)"])
    t = mean.loc[[lora, cat], list(names)].rename(columns=names, index={lora: "LoRA", cat: "CAT"})
    premise = (f"LoRA identity {t.loc['LoRA', 'identity_acc']:.2f} >= 0.70", t.loc["LoRA", "identity_acc"] >= 0.70)
    no_held_out = pd.DataFrame(columns=["method", "kind", "prompt", "paired_preservation"])
    claims = [premise, *check_faithful(t, no_held_out)]
    if held_out:  # say which numbers stood in
        pixels = {"identity": "identity (fidelity: the oracle does not know this concept)",
                  "collapse": "collapse (fidelity's leak: class samples that pass as the concept)"}  # fmt: skip
        claims = [
            (next((text.replace(k, v, 1) for k, v in pixels.items() if k in text), text), ok) for text, ok in claims
        ]
    return claims


def train_variant(job: tuple) -> str:
    """One CAT run with the demo's recipe and the variant's fields (one thread: two of these share the 2 cores)."""
    import torch

    torch.set_num_threads(1)
    from catlab import train
    from catlab.config import ConceptConfig, TrainConfig
    from catlab.demo.recipe import DemoRecipe
    from catlab.notices import quiet_libraries
    from catlab.toyworld.world import toy_concept

    demo, concept, seed, name, fields, recipe = job
    # what a recipe.json written before these fields existed ran with
    ran = {"cat_guidance": 0.0, "lr_scheduler": "constant", "cat_share": 1.0, **_recipe_train(recipe)}
    in_config = {
        k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__
    }  # applied together, checked once
    c = toy_concept(concept)
    key = in_config.pop("regime", "cat")  # a variant may train another method with the same change (regime=lora)
    cfg = DemoRecipe(train={**ran, **in_config}).train_config(
        key, seed, ConceptConfig(str(Path(demo) / "concept"), c.trigger, c.class_word), Path(demo)
    )
    cfg = dataclasses.replace(cfg, output_dir=str(Path(demo) / "runs" / f"{name}_seed{seed}"))
    if cfg.class_prompt:  # the term held on another prompt's base images: they get a folder of their own
        cfg = dataclasses.replace(cfg, class_images_dir=str(Path(demo) / "class_images" / _spelt(cfg.class_prompt)))
    with quiet_libraries():
        train(cfg, progress=False)
    return f"{name} seed {seed}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "demo", help="a folder written by `catlab demo` (or benchmarks/headline.py), or a new one with --new"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SPEC",
        help="an extra CAT setting to train and score (repeatable)",
    )
    ap.add_argument("--sources", default="adapted,base", help="which unconditional branches to score (default: both)")
    ap.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="sample at this classifier-free guidance scale instead of the model's (scores go to "
        "eval_unconditional_SOURCE_gSCALE)",
    )
    ap.add_argument("--new", metavar="CONCEPT", help="start DEMO as a folder of its own for this toy concept")
    ap.add_argument("--first-seed", type=int, default=0, help="with --new: the first training seed (default 0)")
    ap.add_argument("--seeds", type=int, default=3, help="with --new: how many training seeds (default 3)")
    args = ap.parse_args()
    demo = Path(args.demo)
    if args.new:
        start_folder(demo, args.new, args.first_seed, args.seeds)
    if not (demo / "recipe.json").is_file():
        raise SystemExit(f"{demo}: no recipe.json; pass a folder written by `catlab demo` or benchmarks/headline.py")
    recipe = json.loads((demo / "recipe.json").read_text())
    concept, seeds = recipe["concept"], range(recipe["first_seed"], recipe["first_seed"] + recipe["n_seeds"])
    variants = [parse_variant(v) for v in args.variant]

    from catlab.toyworld.world import toy_concept

    jobs = [
        (str(demo), concept, s, v["name"], v["fields"], recipe)
        for v in variants
        for s in seeds
        if not (demo / "runs" / f"{v['name']}_seed{s}" / "adapter").is_dir()
    ]  # a variant trained before is reused
    if jobs:
        from catlab.models import load_base, native_resolution
        from catlab.training.class_images import generate_class_images

        most = max(
            [_recipe_train(recipe)["num_class_images"], *(v["fields"].get("num_class_images", 0) for v in variants)]
        )  # drawn once, before runs share them
        pipe = load_base("toyworld")
        generate_class_images(
            pipe, f"a {toy_concept(concept).class_word}", most, demo / "class_images", native_resolution(pipe)
        )
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            for done in pool.imap_unordered(train_variant, jobs):
                print(f"trained {done}", flush=True)

    import pandas as pd
    import torch

    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.protocol import evaluate, load_concept
    from catlab.evaluation.scoring import Scorers
    from catlab.toyworld.assets import load_oracle

    torch.set_num_threads(2)
    c, oracle = toy_concept(concept), load_oracle()
    seeds_n, trigger_seeds = _recipe_seeds(recipe)
    # the demo's methods and the variants asked for, named as the demo names its methods (lora_s0, ...), so the
    # demo's cached samples are found
    ran_methods = [
        m for m in ("lora", "dreambooth", "cat", "paper_cat") if (demo / "runs" / f"{m}_seed{seeds[0]}").is_dir()
    ]
    settings = [*ran_methods, *(v["name"] for v in variants)]
    adapters = {f"{name}_s{s}": demo / "runs" / f"{name}_seed{s}" / "adapter" for name in settings for s in seeds}
    tables = {}
    for source in args.sources.split(","):
        out = demo / f"eval_unconditional_{source}{'' if args.guidance is None else f'_g{args.guidance:g}'}"
        if (
            source == "adapted"
            and args.guidance is None
            and not (out / "images").exists()
            and (demo / "eval" / "images").exists()
        ):
            shutil.copytree(
                demo / "eval" / "images", out / "images"
            )  # the demo's own samples: same keys, no new sampling
        # by name and two one-thread workers, as the demo samples (same image cache keys)
        sampling = EvalSampling(
            templates=("a {trigger} {class}",),
            seeds=seeds_n,
            trigger_seeds=trigger_seeds,
            unconditional=source,
            guidance_scale=args.guidance,
            workers=2,
        )
        res = evaluate(
            "toyworld",
            adapters,
            load_concept(demo / "concept", c.trigger, c.class_word),
            sampling=sampling,
            scorers=Scorers(oracle=oracle),
            out_dir=out,
            progress=False,
        )
        s = res.summary.set_index("method")[list(COLUMNS)].rename(columns=COLUMNS)
        s["setting"] = [m.rsplit("_s", 1)[0] for m in s.index]
        tables[source] = s
    print(
        f"\n{concept}: {len(seeds)} training seeds, {seeds_n} class-prompt and {trigger_seeds} trigger-prompt sampling seeds; "
        f"guidance {'the model’s' if args.guidance is None else f'{args.guidance:g}'}; mean ± std over training seeds"
    )
    for source, s in tables.items():
        g = s.groupby("setting", sort=False)
        mean, std = g.mean(numeric_only=True), g.std(numeric_only=True).fillna(0.0)
        cells = mean.map(lambda v: f"{v:.2f}") + " ± " + std.map(lambda v: f"{v:.2f}")
        print(f"\nunconditional branch: {source}\n" + cells.to_string())
        for what, lora, cat in claim_pairs(variants, ran_methods) if source == "adapted" else []:
            print(f"\nfaithful-CAT claim, {what} (plain LoRA: {lora}, CAT: {cat}):")
            for text, ok in pair_claims(mean, lora, cat):
                print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if set(tables) != {"adapted", "base"}:
        return 0
    ident = {k: t.groupby("setting", sort=False)["identity"].mean() for k, t in tables.items()}
    ratio = pd.DataFrame(
        {
            "identity adapted": ident["adapted"],
            "identity base": ident["base"],
            "base / adapted": ident["base"] / ident["adapted"].where(ident["adapted"] > 0),
        }
    )
    print("\n" + ratio.round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
