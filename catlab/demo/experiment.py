"""`catlab demo`: the headline experiment on the toy world.

Plain LoRA, DreamBooth prior-preservation LoRA and CAT LoRA are trained on one toy concept with the same data,
seeds, rank, steps and learning rate; each is evaluated with the base model on the same sampling seeds; a report
shows the grids, the metric table, the class-prompt colour histograms, the loss curves and what each method cost.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from catlab.demo.recipe import COLUMNS, METHODS, DemoRecipe, DemoResults, DemoRun  # noqa: F401  (the demo's vocabulary)
from catlab.demo.report import format_table
from catlab.environment import describe_environment, environment_line
from catlab.files import write_csv_atomic, write_json_atomic
from catlab.notices import quiet_libraries


@quiet_libraries()  # the terminal shows catlab's progress and results, not the libraries' notices
def run_demo(
    out: str | Path = "runs/demo",
    n_seeds: int = 3,
    concept: str = "circle_on_navy",
    quick: bool = False,
    overwrite: bool = False,
    recipe: DemoRecipe | None = None,
    first_seed: int = 0,
    workers: int | None = None,
) -> dict:
    """Train, evaluate and report; returns the tables and the report path.

    Training seeds are first_seed, ..., first_seed + n_seeds - 1: a recipe chosen on seeds 0-2 can be checked on
    seeds it was not chosen on. `workers` training runs go side by side in their own processes (default: one per
    CPU core, one thread each; one run at a time on a GPU); the runs do not depend on each other, and neither does
    each model's sampling for the evaluation, which goes side by side the same way."""
    from catlab.config import ConceptConfig
    from catlab.evaluation.protocol import evaluate
    from catlab.evaluation.scoring import Scorers
    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.world import CONCEPTS

    recipe = recipe or (DemoRecipe.quick() if quick else DemoRecipe())
    n_seeds = 1 if quick and n_seeds == 3 else n_seeds
    out, c = _prepare_demo_folder(Path(out), concept, first_seed, overwrite), CONCEPTS[concept]
    t0, environment = time.time(), describe_environment()  # the code and machine as the run starts
    jobs = [(key, seed) for seed in range(first_seed, first_seed + n_seeds) for key in METHODS]
    workers = default_workers(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    print(
        f"catlab demo: concept {concept!r} ('a {c.trigger} {c.class_word}'), {n_seeds} training seed(s), "
        f"{recipe.train['steps']} steps each" + (f", {workers} runs at a time" if workers > 1 else "")
    )
    concept_cfg = ConceptConfig(str(out / "concept"), c.trigger, c.class_word)
    configs = [recipe.train_config(key, seed, concept_cfg, out) for key, seed in jobs]
    pipe = load_base("toyworld")
    class_images_s = _draw_class_images(pipe, configs)  # once, before runs that share them start side by side
    sampling = replace(recipe.sampling_for(c.class_word), workers=workers)
    results = _train_all(configs, workers, [f"{key}_s{seed}" for key, seed in jobs], (c, sampling, out / "eval"))
    first_db = _first_dreambooth(jobs)
    runs = [
        DemoRun(key, seed, res.adapter_dir, train_s=res.wall_time_s - res.class_images_s,
                class_images_s=res.class_images_s + (class_images_s if k == first_db else 0.0),
                history=res.history, config=cfg)
        for k, ((key, seed), res, cfg) in enumerate(zip(jobs, results, configs))
    ]  # fmt: skip
    # with workers, every image is already drawn (by name "toyworld", the key the workers used): this only scores
    scorers = Scorers(oracle=load_oracle())
    runs_by_name = {r.name: r.adapter for r in runs}
    result = evaluate("toyworld" if workers > 1 else pipe, runs_by_name, out / "concept", sampling=sampling,
                      scorers=scorers, out_dir=out / "eval")  # fmt: skip
    rerun = (f"catlab demo --out {out} --overwrite --concept {concept} --seeds {n_seeds}"
             + (f" --first-seed {first_seed}" if first_seed else "") + (" --quick" if quick else "")
             + ("" if recipe.name == "demo" else f" --recipe {recipe.name}" if recipe.name != "changed"
                else "  (with the changed recipe in recipe.json)"))  # fmt: skip
    demo = DemoResults(out, c, recipe, runs, result.per_image, summarise_by_method(result.per_image, runs),
                       cost_table(runs), n_seeds, total_s=time.time() - t0, rerun=rerun,
                       environment=environment)  # fmt: skip
    report = _write_results(demo, {"n_seeds": n_seeds, "first_seed": first_seed, "concept": concept}, t0)
    return {"table": demo.table, "costs": demo.costs, "per_image": demo.per_image, "report": report, "runs": runs}


def _prepare_demo_folder(out: Path, concept: str, first_seed: int, overwrite: bool) -> Path:
    """Check the arguments and make `out` (replacing an earlier demo only when asked) with the concept exported."""
    from catlab.toyworld.world import CONCEPTS, HELD_OUT_CONCEPTS, export_concept

    if first_seed < 0:
        raise ValueError(f"first_seed={first_seed}: training seeds must be >= 0")
    if concept in HELD_OUT_CONCEPTS:  # the demo's table is the oracle's
        raise ValueError(
            f"{concept!r} is held out from the oracle, whose identity and collapse the demo reports; run its "
            f"methods with `python benchmarks/unconditional_source.py runs/FOLDER --new {concept} --variant "
            "regime=lora --variant regime=cat`, which judges it by fidelity, or choose one of "
            f"{sorted(CONCEPTS)}"
        )
    if concept not in CONCEPTS:
        raise ValueError(f"unknown toy concept {concept!r}; choose one of {sorted(CONCEPTS)}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a demo; pass --overwrite to replace it or --out to write elsewhere"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    export_concept(concept, out / "concept")
    return out


def _write_results(demo: DemoResults, run_args: dict, t0: float) -> Path:
    """The report, the table and recipe.json; prints the table and the costs. Returns the report's path."""
    from catlab.demo.report import write_report

    report = write_report(demo)
    print("\n" + format_table(demo.table))
    print("\n" + demo.costs.to_string(index=False))
    print(f"ran on: {environment_line(demo.environment)}")
    print(f"\nreport: {report}  ({time.time() - t0:.0f} s in all)")
    write_csv_atomic(demo.out / "table.csv", demo.table)
    write_json_atomic(demo.out / "recipe.json", {**demo.recipe.to_json(), **run_args, "environment": demo.environment})
    return report


def default_workers(n_jobs: int) -> int:
    """Training runs side by side: one per CPU core (a tiny UNet keeps one thread busy, and two runs on one thread
    each beat one run on two); one at a time on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(n_jobs, os.cpu_count() or 1))


def _first_dreambooth(jobs: list[tuple[str, int]]) -> int:
    return next((k for k, (key, _) in enumerate(jobs) if key == "dreambooth"), -1)


def _draw_class_images(pipe, configs) -> float:
    """The class images every run shares (DreamBooth's prior, CAT's anchors), drawn by the base model once; seconds."""
    from catlab.models import native_resolution
    from catlab.training import class_images

    cfg = next((c for c in configs if c.needs_class_images), None)
    if cfg is None:
        return 0.0
    return class_images.prepare(pipe, cfg, Path(cfg.output_dir), cfg.resolution or native_resolution(pipe))[2]


RUN_COST_RANK = {"cat": 0, "dreambooth": 1, "lora": 2}  # slowest first (docs/results.md, step cost)


def _train_all(configs, workers: int, names: list[str], evaluation: tuple) -> list:
    """TrainResults in the order of `configs`. With workers, each adapter's evaluation images are drawn by the worker
    that frees up next as soon as the adapter exists (and the base model's at the end of the queue), so no core waits
    for the last training run; the later `evaluate` finds them cached."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    from catlab.training.loop import train

    if workers == 1:
        return [train(cfg) for cfg in configs]
    from catlab.evaluation.images import start_one_thread_worker
    from catlab.evaluation.scoring import BASE

    bar = tqdm(
        total=2 * len(configs) + 1,
        desc=f"training {len(configs)} adapters and sampling them, {workers} at a time",
        unit="job",
    )
    # longest runs first (CAT, then DreamBooth's double batch, then plain LoRA), so that no worker is left with a
    # long run at the end: the demo's nine runs finish about a minute sooner than in seed order on 2 cores
    longest_first = sorted(range(len(configs)), key=lambda k: RUN_COST_RANK.get(configs[k].regime, len(RUN_COST_RANK)))
    results: dict[int, object] = {}
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_one_thread_worker
    ) as pool:
        training = {pool.submit(_train_quietly, configs[k]): k for k in longest_first}
        sampling = {pool.submit(_sample_quietly, BASE, None, evaluation)}
        while training or sampling:
            done, _ = wait([*training, *sampling], return_when=FIRST_COMPLETED)
            for future in done:
                bar.update()
                if future in training:
                    k = training.pop(future)
                    results[k] = future.result()
                    sampling.add(pool.submit(_sample_quietly, names[k], results[k].adapter_dir, evaluation))
                else:
                    sampling.discard(future)
                    future.result()  # a worker's error surfaces here, with its traceback
    bar.close()
    return [results[k] for k in range(len(configs))]


def _sample_quietly(method: str, adapter, evaluation: tuple) -> None:
    """Draw one model's evaluation images into the cache that the demo's `evaluate` then reads."""
    from catlab.evaluation.images import sample_for_evaluation

    concept, sampling, out_dir = evaluation
    with quiet_libraries():
        sample_for_evaluation("toyworld", method, adapter, concept.trigger, concept.class_word, sampling, out_dir)


def _train_quietly(cfg):
    from catlab.training.loop import train

    with quiet_libraries():
        return train(cfg, progress=False)


def summarise_by_method(per_image: pd.DataFrame, runs: list[DemoRun]) -> pd.DataFrame:
    """One row per method: mean and std over training seeds of each score (each seed's score is a mean over images)."""
    from catlab.evaluation.held_out import held_out_colour_distances
    from catlab.evaluation.scoring import BASE
    from catlab.evaluation.summary import per_seed_scores

    seed_scores = per_seed_scores(per_image)  # per (adapter name, eval seed)
    by_adapter = seed_scores.groupby("method").mean(numeric_only=True)
    cls = per_image[per_image["kind"] == "class"]
    sets = cls.groupby(["method", "prompt"]).first().reset_index()
    set_means = sets.groupby("method")[
        [c for c in ("DIV", "Vendi", "colour_entropy", "colour_distance") if c in sets]
    ].mean()
    by_adapter = by_adapter.join(set_means)
    held_out = [held_out_colour_distances(per_image, m).mean() for m in by_adapter.index]  # mean over the prompts
    by_adapter["held_out_colour_distance"] = held_out
    rows = []
    groups = [("base model", [BASE])] + [
        (name, [s.name for s in runs if s.key == k]) for k, name in METHODS.items() if any(s.key == k for s in runs)
    ]
    for name, members in groups:
        sub = by_adapter.loc[[m for m in members if m in by_adapter.index]]
        row = {"method": name, "n_train_seeds": len(sub) if name != "base model" else 0}
        for col in COLUMNS:
            if col in sub:
                row[col] = sub[col].mean()
                row[f"{col}_std"] = sub[col].std(ddof=1) if len(sub) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(runs: list[DemoRun]) -> pd.DataFrame:
    rows = []
    for key, name in METHODS.items():
        rs = [r for r in runs if r.key == key]
        if not rs:
            continue
        step_s = np.median([h["step_s"] for r in rs for h in r.history[1:]] or [np.nan])
        rows.append(
            {
                "method": name,
                "train_s_per_run": float(np.mean([r.train_s for r in rs])),
                "class_images_s": float(sum(r.class_images_s for r in rs)),
                "median_step_ms": 1000 * float(step_s),
            }
        )
    df = pd.DataFrame(rows)
    plain = df.loc[df["method"] == "LoRA", "median_step_ms"]
    if len(plain):
        df["step_vs_lora"] = df["median_step_ms"] / float(plain.iloc[0])
    return df
