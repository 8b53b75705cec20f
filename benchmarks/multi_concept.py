"""Several toy concepts in one model, trained in one adapter or trained apart and combined, for each method.

    python benchmarks/multi_concept.py [--out runs/multi_concept] [--seeds 0,1,2] [--sets two,three,same]
        [--methods lora,dreambooth,cat] [--class-seeds 48] [--trigger-seeds 24] [--held-out-seeds 8] [--quick]
    python benchmarks/multi_concept.py --out runs/multi_concept --report [--seeds 0] [--sets same] [--methods cat]
        # a finished run's results again, for the seeds, sets and methods given (default: all of the run's)

Sets (SETS): two concepts of different classes, three of different classes, two of the same class. Per method and
training seed, with the demo's recipe (DemoRecipe) for every method and concept:
  - one single-concept adapter per concept (600 steps);
  - "one adapter": one adapter trained on the set's concepts together, 600 steps per concept (as many looks at
    each concept as its single adapter had);
  - "sum": the single adapters both on at weight 1 (peft's "cat" combination, written as one file);
  - "linear": peft's weighted combination of the single adapters' factors (weights 1).
Every model is scored on every concept of its set (catlab.evaluation.multi_concept): identity, fidelity, identity
against the same method's single adapter, cross-talk, the concept's class and the prompts no concept names.
Prints the table (mean over training seeds), docs/results.md's table and its claims ("Several concepts"); writes
out/table.csv, out/per_image.csv and out/by_prompt.csv. Finished trainings are reused when run again.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from dataclasses import replace
from pathlib import Path

SETS = {
    "two": ("circle_on_navy", "bronze_star"),  # a circle and a star
    # and a square: the world's only square concept, whose stripes its autoencoder does not keep (docs/toyworld.md),
    # so its own identity stays 0 and it stands for a concept that fails to train beside two that do
    "three": ("circle_on_navy", "bronze_star", "striped_square"),
    "same": ("circle_on_navy", "huge_circle"),  # two circles: one class, two triggers
}
COMBINED = ("sum", "linear")  # catlab.models.combine.COMBINATIONS
# methods beyond the demo's (--methods): CAT with its term also on the base model's images of every class the world
# draws (TrainConfig.anchor_prompts; docs/results.md, "How far CAT's term reaches")
VARIANTS = {"cat_anchored": dict(anchor_prompts=[f"a {shape}" for shape in ("circle", "square", "triangle", "star")])}


def run_dir(out: Path, method: str, seed: int, concepts: tuple[str, ...]) -> Path:
    return out / "runs" / f"{method}_{'+'.join(concepts)}_seed{seed}"


def train_config(out: Path, method: str, seed: int, concepts: tuple[str, ...], quick: bool):
    """The demo's recipe for `method` on these concepts (600 steps per concept); class images shared per class set."""
    from catlab.config import ConceptConfig
    from catlab.demo.recipe import DemoRecipe
    from catlab.toyworld.world import CONCEPTS

    recipe = DemoRecipe.quick() if quick else DemoRecipe()
    folders = [ConceptConfig(str(out / "concepts" / c), CONCEPTS[c].trigger, CONCEPTS[c].class_word) for c in concepts]
    classes = sorted({CONCEPTS[c].class_word for c in concepts})
    return replace(
        recipe.train_config("cat" if method in VARIANTS else method, seed, folders[0], out),
        **VARIANTS.get(method, {}),
        concepts=folders,
        steps=recipe.train["steps"] * len(concepts),
        output_dir=str(run_dir(out, method, seed, concepts)),
        class_images_dir=str(out / "class_images" / "+".join(classes)),
    )


def _train(cfg) -> str:
    import torch

    from catlab import train
    from catlab.notices import quiet_libraries

    torch.set_num_threads(1)
    with quiet_libraries():
        train(cfg, progress=False)
    return cfg.output_dir


def train_all(out: Path, jobs: list, quick: bool) -> None:
    """Every (method, seed, concepts) run not trained yet, two at a time; class images drawn first, once per set."""
    train_missing([train_config(out, m, s, cs, quick) for m, s, cs in jobs])


def train_missing(configs: list) -> None:
    """The TrainConfigs whose adapter is not there yet, two one-thread runs at a time, class images drawn first
    (runs that share a folder must not draw it side by side); finished runs are reused."""
    from catlab.models import load_base, native_resolution
    from catlab.training import class_images

    todo = [c for c in configs if not (Path(c.output_dir) / "adapter").is_dir()]
    if not todo:
        return
    pipe = load_base("toyworld")
    for cfg in todo:
        if cfg.needs_class_images:
            class_images.prepare(pipe, cfg, Path(cfg.output_dir), native_resolution(pipe))
    todo.sort(key=lambda c: -c.steps * (2 if c.regime != "lora" else 1))  # longest first: no core idles at the end
    t0 = time.time()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for k, done in enumerate(pool.imap_unordered(_train, todo), 1):
            print(f"[{time.time() - t0:5.0f} s] trained {k}/{len(todo)}: {Path(done).name}", flush=True)


def models_of(out: Path, methods: list[str], seeds: list[int], concepts: tuple[str, ...]) -> list[dict]:
    """Every model of one set: name, method, seed, how it was made, its adapter; the combined files are written here."""
    from catlab.models.combine import combine_adapters

    models = []
    for method in methods:
        for seed in seeds:
            singles = {c: run_dir(out, method, seed, (c,)) / "adapter" for c in concepts}
            for c, path in singles.items():
                models.append(dict(model=f"{method} single {c} s{seed}", method=method, seed=seed, how=f"single {c}",
                                   adapter=path))  # fmt: skip
            models.append(dict(model=f"{method} one adapter {'+'.join(concepts)} s{seed}", method=method, seed=seed,
                               how="one adapter", adapter=run_dir(out, method, seed, concepts) / "adapter"))  # fmt: skip
            for how in COMBINED:
                path = out / "combined" / f"{method}_{how}_{'+'.join(concepts)}_seed{seed}"
                if not path.is_dir():
                    combine_adapters(list(singles.values()), path, how=how)
                models.append(dict(model=f"{method} {how} {'+'.join(concepts)} s{seed}", method=method, seed=seed,
                                   how=how, adapter=path))  # fmt: skip
    return models


def score_set(out: Path, name: str, models: list[dict], sampling) -> tuple:
    import pandas as pd

    from catlab.evaluation.multi_concept import evaluate_concepts, multi_concept_table, untouched_by_prompt
    from catlab.evaluation.scoring import Scorers
    from catlab.toyworld.assets import load_oracle

    concepts = SETS[name]
    per_image = evaluate_concepts(
        {m["model"]: m["adapter"] for m in models}, concepts, sampling, out / "eval", Scorers(oracle=load_oracle())
    )
    single_of = {
        (m["model"], c): f"{m['method']} single {c} s{m['seed']}" for m in models for c in concepts
    }  # each model's identity on a concept against the same method's single adapter of that concept
    info = pd.DataFrame(models).drop(columns="adapter")
    table = multi_concept_table(per_image, single_of).merge(info, on="model", how="left").assign(set=name)
    by_prompt = untouched_by_prompt(per_image).merge(info, on="model", how="left").assign(set=name)
    return table, by_prompt, per_image.assign(set=name)


def summarise(table, by_prompt):
    """Mean over training seeds per set, method, way of making the model and concept (own concept only for singles)."""
    own = table[~table["how"].str.startswith("single") | (table["how"] == "single " + table["concept"])]
    keys = ["set", "method", "how", "concept"]
    scores = [c for c in own.columns if c not in (*keys, "model", "seed")]
    summary = own.groupby(keys, sort=False)[scores].mean().reset_index()
    prompts = by_prompt.groupby(["set", "method", "how", "prompt"], sort=False)["paired_preservation"].mean()
    return summary, prompts.reset_index()


METHOD_NAMES = {
    "lora": "LoRA",
    "dreambooth": "DreamBooth-LoRA",
    "cat": "CAT",
    "cat_anchored": "CAT, all classes anchored",
}


def markdown_table(summary, prompts) -> str:
    """docs/results.md's table: per set, method and model, each concept's identity, fidelity and class in the set's
    order (first / second / ...), the lowest identity against the single adapter, the highest cross-talk, and the
    untouched prompts' paired preservation, mean (lowest prompt); the single adapters pooled into one row."""
    pooled = summary.assign(model=summary["how"].where(~summary["how"].str.startswith("single"), "single"))
    held = prompts.assign(model=prompts["how"].where(~prompts["how"].str.startswith("single"), "single"))

    def slash(values) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    lines = ["| set | method | model | identity | fidelity | vs single (lowest) | cross-talk | class paired "
             "| untouched paired |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, method, model), g in pooled.groupby(["set", "method", "model"], sort=False):
        g = g.set_index("concept").reindex(list(SETS[name]))
        mine = held[(held["set"] == name) & (held["method"] == method) & (held["model"] == model)]
        by_prompt = mine.groupby("prompt")["paired_preservation"].mean()
        ratio = "" if model == "single" else f"{g['identity_vs_single'].min():.2f}"
        lines.append(
            f"| {name} | {METHOD_NAMES.get(method, method)} | {model} | {slash(g['identity'])} | {slash(g['fidelity'])} "
            f"| {ratio} | {g[['trigger_crosstalk', 'class_crosstalk']].max().max():.2f} "
            f"| {slash(g['paired_preservation'])} | {by_prompt.mean():.2f} ({by_prompt.min():.2f}) |"
        )
    return "\n".join(lines)


def report(table, by_prompt) -> int:
    """Print the summary, each combined model per training seed, the untouched prompts, docs/results.md's table and
    the claims; 0 if every claim holds."""
    import pandas as pd

    summary, prompts = summarise(table, by_prompt)
    pd.set_option("display.width", 200)
    print(summary.round(2).to_string(index=False))
    combined = table[~table["how"].str.startswith("single")]
    held = by_prompt.groupby(["set", "method", "how", "seed"], sort=False)["paired_preservation"].agg(["mean", "min"])
    print("\nper training seed: identity and class paired per concept; untouched prompts' mean and lowest per model:")
    print(combined.pivot_table(index=["set", "method", "how", "concept"], columns="seed", sort=False,
                               values=["identity", "paired_preservation"]).round(2).to_string())  # fmt: skip
    print(held.unstack("seed").round(2).to_string())
    print("\npaired preservation per prompt no concept names:")
    print(prompts.pivot_table(index=["set", "method", "how"], columns="prompt", values="paired_preservation",
                              sort=False).round(2).to_string())  # fmt: skip
    print("\n" + markdown_table(summary, prompts) + "\n")
    results = claims(summary, prompts)
    for text, ok in results:
        print(("PASS " if ok else "FAIL ") + text)
    return 0 if all(ok for _, ok in results) else 1


def claims(summary, prompts) -> list[tuple[str, bool]]:
    """docs/results.md's bars for each CAT method's multi-concept models (one adapter, sum, linear)."""
    combined = ~summary["how"].str.startswith("single") & summary["method"].str.startswith("cat")
    out = []
    for (s, method, how), g in summary[combined].groupby(["set", "method", "how"], sort=False):
        ratio, talk = g["identity_vs_single"].min(), g[["trigger_crosstalk", "class_crosstalk"]].max().max()
        classes = g["paired_preservation"].min()
        mine = (prompts["set"] == s) & (prompts["method"] == method) & (prompts["how"] == how)
        held = prompts[mine]["paired_preservation"].min()
        name = f"{s} / {method} / {how}"
        out += [
            (f"{name}: each trigger >= 0.9x its single adapter's identity (lowest {ratio:.2f})", ratio >= 0.9),
            (f"{name}: cross-talk <= 0.05 (highest {talk:.2f})", talk <= 0.05),
            (f"{name}: every class paired >= 0.8 (lowest {classes:.2f})", classes >= 0.8),
            (f"{name}: every untouched prompt paired >= 0.8 (lowest {held:.2f})", held >= 0.8),
        ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/multi_concept")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    ap.add_argument("--sets", default="two,three,same", help=f"which of {list(SETS)}")
    ap.add_argument("--methods", default="lora,dreambooth,cat", help=f"demo methods, or {list(VARIANTS)}")
    ap.add_argument("--class-seeds", type=int, default=48, help="sampling seeds per class prompt")
    ap.add_argument("--trigger-seeds", type=int, default=24, help="sampling seeds per trigger prompt")
    ap.add_argument("--held-out-seeds", type=int, default=8, help="sampling seeds per prompt no concept names")
    ap.add_argument("--quick", action="store_true", help="a few steps and seeds: checks the plumbing only")
    ap.add_argument("--report", action="store_true", help="print the results of a finished run (its CSVs) again")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report:
        import numpy as np
        import pandas as pd

        table, by_prompt = pd.read_csv(out / "table.csv"), pd.read_csv(out / "by_prompt.csv")
        keep = {"seed": [int(s) for s in args.seeds.split(",")], "set": args.sets.split(","),
                "method": args.methods.split(",")}  # fmt: skip
        return report(
            *(df[np.logical_and.reduce([df[k].isin(v) for k, v in keep.items()])] for df in (table, by_prompt))
        )
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {list(SETS)}")
    seeds, methods = [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    import pandas as pd

    from catlab.demo.recipe import QUICK_SAMPLE_STEPS
    from catlab.evaluation.images import EvalSampling
    from catlab.toyworld.world import export_concept

    for c in sorted({c for s in sets for c in SETS[s]}):
        if not (out / "concepts" / c).is_dir():
            export_concept(c, out / "concepts" / c)
    jobs = {(m, s, (c,)) for m in methods for s in seeds for name in sets for c in SETS[name]}
    jobs |= {(m, s, SETS[name]) for m in methods for s in seeds for name in sets}
    train_all(out, sorted(jobs), args.quick)
    n = (2, 1, 1) if args.quick else (args.class_seeds, args.trigger_seeds, args.held_out_seeds)
    sampling = EvalSampling(templates=("a {trigger} {class}",), seeds=n[0], trigger_seeds=n[1], held_out_seeds=n[2],
                            num_inference_steps=QUICK_SAMPLE_STEPS if args.quick else None,
                            workers=2)  # fmt: skip
    parts = [score_set(out, name, models_of(out, methods, seeds, SETS[name]), sampling) for name in sets]
    table, by_prompt, per_image = (pd.concat(p, ignore_index=True) for p in zip(*parts))
    for name, df in (("table", table), ("by_prompt", by_prompt), ("per_image", per_image)):
        df.to_csv(out / f"{name}.csv", index=False)
    return report(table, by_prompt)


if __name__ == "__main__":
    sys.exit(main())
