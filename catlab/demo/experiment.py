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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from catlab.demo.report import COLUMNS, METHODS, DemoRun, format_table  # noqa: F401  (re-exported: the demo's table vocabulary)
from catlab.files import write_csv_atomic, write_json_atomic
from catlab.notices import quiet_libraries


@dataclass
class DemoRecipe:
    """A typical small-LoRA setting for the toy world, under which plain LoRA shows the collapse."""

    # an attention-only LoRA needs ~600 steps at lr 5e-3 to draw a toy concept; 450 with the cosine decay still drew
    # both demo concepts but let huge_circle's class drift past the colour-distance bar on seeds 6-8 (docs/results.md)
    steps: int = 600
    learning_rate: float = 5e-3  # toy-world scale (SD 1.5 LoRAs use ~1e-4 at 512 px); 1.5e-2 learnt nothing, 8e-3 x 300 steps too little
    # cosine decay to 0 (Loshchilov & Hutter 2017, arXiv 1608.03983): on training seeds 0-2 CAT learnt both concepts
    # more reliably than at a constant lr (identity 0.73 +- 0.23 -> 0.86 +- 0.03 on huge_circle, 0.90 -> 1.00 on
    # circle_on_navy) with the same paired preservation and colour distance (docs/results.md)
    lr_scheduler: str = "cosine"
    rank: int = 4
    batch_size: int = 4
    # the CAT authors' adapter: every attention projection (the toy UNet has cross-attention at 8x8 and 4x4)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # beyond the paper (docs/results.md, "holding what guidance samples"): the CAT term holds the guided class
    # prediction eps("") + 3 (eps(c_free) - eps("")) at the toy world's sampling guidance 3, on the base model's own
    # class images (where class prompts go) rather than on the concept's. lambda on training seeds 0-2: at a constant
    # lr, 2 let huge_circle's class drift (colour distance 0.19) and 4 left one circle_on_navy seed of three without
    # the concept; with the cosine decay, 4 costs no identity and holds huge_circle's class a little closer than 3
    # (paired 0.76 -> 0.80), and 3 had missed the colour-distance bar on seeds 6-8 (docs/results.md)
    cat_lambda: float = 4.0
    # 2 class images per step carry the term beside the 4 concept images, not 4: a CAT step then costs 2.1x a plain
    # LoRA step instead of 2.8x (the demo's cost table), which keeps the demo well inside its 10 minutes; tried on
    # huge_circle, training seeds 0-2, it held the class about as well as 4 (paired 0.76 vs 0.80, colour distance 0.111 vs
    # 0.125, identity 0.86 vs 0.90; docs/results.md)
    cat_share: float = 0.5
    cat_every: int = 1  # amortised CAT (training.md, "Cheaper CAT"): the term on every k-th step only, weighted by k
    cat_null_share: float = 0.0  # the guided term holds the empty caption itself
    cat_anchor: str = "class"
    cat_guidance: float = 3.0
    prior_loss_weight: float = 1.0  # DreamBooth's default
    # DreamBooth's class images per step, as a share of the batch: 2 beside the 4 concept images, as many of the base
    # model's class images as CAT's term sees (cat_share), so both preservation methods get the same prior per step
    # and a DreamBooth step costs less (docs/results.md, the headline)
    prior_share: float = 0.5
    num_class_images: int = 40  # DreamBooth's prior images; CAT's class anchors reuse them
    # where sampling takes classifier-free guidance's unconditional branch for every adapter: "adapted" (what every
    # pipeline does) or "base" (the adapters off for that branch; catlab.sampling.guidance)
    unconditional: str = "adapted"
    eval_seeds: int = 48  # >= 48 class samples per adapter: fewer measure even the base model's class as narrow
    # trigger-prompt samples per adapter: identity is a rate, and 3 training seeds x 24 samples measure it to about
    # +-0.05; drawing 24 instead of 48 saves a quarter of the sampling (docs/results.md, the headline)
    eval_trigger_seeds: int = 24
    eval_templates: tuple[str, ...] = ("a {trigger} {class}",)
    grid_seeds: int = 8

    @classmethod
    def quick(cls) -> DemoRecipe:
        """Checks the plumbing only: the numbers mean nothing."""
        return cls(steps=4, batch_size=2, num_class_images=2, eval_seeds=2, eval_trigger_seeds=2, grid_seeds=2,
                   eval_templates=("a {trigger} {class}",))


def _train_config(regime: str, seed: int, recipe: DemoRecipe, concept, out: Path):
    from catlab.config import ConceptConfig, TrainConfig

    return TrainConfig(
        concepts=[ConceptConfig(str(out / "concept"), concept.trigger, concept.class_word)], output_dir=str(out / "runs" / f"{regime}_seed{seed}"),
        regime=regime, seed=seed, steps=recipe.steps, learning_rate=recipe.learning_rate, lr_scheduler=recipe.lr_scheduler, rank=recipe.rank, batch_size=recipe.batch_size,
        target_modules=list(recipe.target_modules),
        cat_lambda=recipe.cat_lambda, cat_share=recipe.cat_share, cat_every=recipe.cat_every, cat_null_share=recipe.cat_null_share, cat_anchor=recipe.cat_anchor, cat_guidance=recipe.cat_guidance,
        prior_loss_weight=recipe.prior_loss_weight, prior_share=recipe.prior_share, num_class_images=recipe.num_class_images,
        class_images_dir=str(out / "class_images"), random_flip=False,  # the two-tone concepts are not mirror-symmetric
        checkpoint_every=0, validate_every=0, log_every=10,
    )


@quiet_libraries()  # the terminal shows catlab's progress and results, not the libraries' notices
def run_demo(out: str | Path = "runs/demo", n_seeds: int = 3, concept: str = "circle_on_navy", quick: bool = False,
             overwrite: bool = False, recipe: DemoRecipe | None = None, first_seed: int = 0, workers: int | None = None) -> dict:
    """Train, evaluate and report; returns the tables and the report path.

    Training seeds are first_seed, ..., first_seed + n_seeds - 1: a recipe chosen on seeds 0-2 can be checked on
    seeds it was not chosen on. `workers` training runs go side by side in their own processes (default: one per
    CPU core, one thread each; one run at a time on a GPU); the runs do not depend on each other, and neither does
    each model's sampling for the evaluation, which goes side by side the same way."""
    from catlab.evaluation.protocol import evaluate
    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.world import CONCEPTS, export_concept

    if first_seed < 0:
        raise ValueError(f"first_seed={first_seed}: training seeds must be >= 0")
    if concept not in CONCEPTS:
        raise ValueError(f"unknown toy concept {concept!r}; choose one of {sorted(CONCEPTS)}")
    recipe = recipe or (DemoRecipe.quick() if quick else DemoRecipe())
    n_seeds = 1 if quick and n_seeds == 3 else n_seeds
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a demo; pass --overwrite to replace it or --out to write elsewhere")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    c = CONCEPTS[concept]
    export_concept(concept, out / "concept")
    t0 = time.time()
    jobs = [(regime, seed) for seed in range(first_seed, first_seed + n_seeds) for regime in METHODS]
    workers = default_workers(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    print(f"catlab demo: concept {concept!r} ('a {c.trigger} {c.class_word}'), {n_seeds} training seed(s), {recipe.steps} steps each"
          + (f", {workers} runs at a time" if workers > 1 else ""))
    configs = [_train_config(regime, seed, recipe, c, out) for regime, seed in jobs]
    pipe = load_base("toyworld")
    class_images_s = _draw_class_images(pipe, configs)  # once, before runs that share them start side by side
    eval_kwargs = dict(trigger=c.trigger, class_word=c.class_word, templates=recipe.eval_templates, seeds=recipe.eval_seeds,
                       trigger_seeds=recipe.eval_trigger_seeds, out_dir=out / "eval", unconditional=recipe.unconditional)
    results = _train_all(configs, workers, [f"{regime}_s{seed}" for regime, seed in jobs], eval_kwargs)
    runs = [DemoRun(regime, seed, res.adapter_dir, train_s=res.wall_time_s - res.class_images_s,
                    class_images_s=res.class_images_s + (class_images_s if k == _first_dreambooth(jobs) else 0.0), history=res.history)
            for k, ((regime, seed), res) in enumerate(zip(jobs, results))]
    adapters = {r.name: r.adapter for r in runs}
    # with workers, every image is already drawn (by name "toyworld", the key the workers used): this only scores
    result = evaluate("toyworld" if workers > 1 else pipe, adapters, concept=out / "concept", oracle=load_oracle(), **eval_kwargs)
    table = summarise_by_method(result.per_image, runs)
    costs = cost_table(runs)
    from catlab.demo.report import write_report

    rerun = (f"catlab demo --out {out} --overwrite --concept {concept} --seeds {n_seeds}" + (f" --first-seed {first_seed}" if first_seed else "")
             + (" --quick" if quick else ""))
    report = write_report(out, result.per_image, table, costs, runs, c, recipe, n_seeds, time.time() - t0, rerun=rerun)
    print("\n" + format_table(table))
    print("\n" + costs.to_string(index=False))
    print(f"\nreport: {report}  ({time.time() - t0:.0f} s in all)")
    write_csv_atomic(out / "table.csv", table)
    write_json_atomic(out / "recipe.json", {**asdict(recipe), "n_seeds": n_seeds, "first_seed": first_seed, "concept": concept})
    return {"table": table, "costs": costs, "per_image": result.per_image, "report": report, "runs": runs}


def default_workers(n_jobs: int) -> int:
    """Training runs side by side: one per CPU core (a tiny UNet keeps one thread busy, and two runs on one thread
    each beat one run on two); one at a time on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(n_jobs, os.cpu_count() or 1))


def _first_dreambooth(jobs: list[tuple[str, int]]) -> int:
    return next((k for k, (regime, _) in enumerate(jobs) if regime == "dreambooth"), -1)


def _draw_class_images(pipe, configs) -> float:
    """The class images every run shares (DreamBooth's prior, CAT's anchors), drawn by the base model once; seconds."""
    from catlab.models import native_resolution
    from catlab.training.class_images import generate_class_images

    cfg = next((c for c in configs if c.regime == "dreambooth" or (c.regime == "cat" and c.cat_anchor == "class")), None)
    if cfg is None:
        return 0.0
    t0 = time.time()
    prompt = cfg.class_prompt or f"a {cfg.concepts[0].class_word}"
    generate_class_images(pipe, prompt, cfg.num_class_images, Path(cfg.class_images_dir), cfg.resolution or native_resolution(pipe))
    return time.time() - t0


RUN_COST_RANK = {"cat": 0, "dreambooth": 1, "lora": 2}  # slowest first (docs/results.md, step cost)


def _train_all(configs, workers: int, names: list[str], eval_kwargs: dict) -> list:
    """TrainResults in the order of `configs`. With workers, each adapter's evaluation images are drawn by the worker
    that frees up next as soon as the adapter exists (and the base model's at the end of the queue), so no core waits
    for the last training run; the later `evaluate` finds them cached."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    from catlab.training.loop import train

    if workers == 1:
        return [train(cfg) for cfg in configs]
    from catlab.evaluation.protocol import start_one_thread_worker
    from catlab.evaluation.scoring import BASE

    bar = tqdm(total=2 * len(configs) + 1, desc=f"training {len(configs)} adapters and sampling them, {workers} at a time", unit="job")
    # longest runs first (CAT, then DreamBooth's double batch, then plain LoRA), so that no worker is left with a
    # long run at the end: the demo's nine runs finish about a minute sooner than in seed order on 2 cores
    longest_first = sorted(range(len(configs)), key=lambda k: RUN_COST_RANK.get(configs[k].regime, len(RUN_COST_RANK)))
    results: dict[int, object] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_one_thread_worker) as pool:
        training = {pool.submit(_train_quietly, configs[k]): k for k in longest_first}
        sampling = {pool.submit(_sample_quietly, BASE, None, eval_kwargs)}
        while training or sampling:
            done, _ = wait([*training, *sampling], return_when=FIRST_COMPLETED)
            for future in done:
                bar.update()
                if future in training:
                    k = training.pop(future)
                    results[k] = future.result()
                    sampling.add(pool.submit(_sample_quietly, names[k], results[k].adapter_dir, eval_kwargs))
                else:
                    sampling.discard(future)
                    future.result()  # a worker's error surfaces here, with its traceback
    bar.close()
    return [results[k] for k in range(len(configs))]


def _sample_quietly(method: str, adapter, eval_kwargs: dict) -> None:
    from catlab.evaluation.protocol import sample_for_evaluation

    with quiet_libraries():
        sample_for_evaluation("toyworld", method, adapter, **eval_kwargs)


def _train_quietly(cfg):
    from catlab.training.loop import train

    with quiet_libraries():
        return train(cfg, progress=False)


def summarise_by_method(per_image: pd.DataFrame, runs: list[DemoRun]) -> pd.DataFrame:
    """One row per method: mean and std over training seeds of each score (each seed's score is a mean over images)."""
    from catlab.evaluation.scoring import BASE, per_seed_scores

    seed_scores = per_seed_scores(per_image)  # per (adapter name, eval seed)
    by_adapter = seed_scores.groupby("method").mean(numeric_only=True)
    cls = per_image[per_image["kind"] == "class"]
    sets = cls.groupby(["method", "prompt"]).first().reset_index()
    set_means = sets.groupby("method")[[c for c in ("DIV", "Vendi", "colour_entropy", "colour_distance") if c in sets]].mean()
    by_adapter = by_adapter.join(set_means)
    rows = []
    groups = [("base model", [BASE])] + [(name, [s.name for s in runs if s.regime == r])
                                         for r, name in METHODS.items() if any(s.regime == r for s in runs)]
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
    for regime, name in METHODS.items():
        rs = [r for r in runs if r.regime == regime]
        if not rs:
            continue
        step_s = np.median([h["step_s"] for r in rs for h in r.history[1:]] or [np.nan])
        rows.append({"method": name, "train_s_per_run": float(np.mean([r.train_s for r in rs])),
                     "class_images_s": float(sum(r.class_images_s for r in rs)), "median_step_ms": 1000 * float(step_s)})
    df = pd.DataFrame(rows)
    plain = df.loc[df["method"] == "LoRA", "median_step_ms"]
    if len(plain):
        df["step_vs_lora"] = df["median_step_ms"] / float(plain.iloc[0])
    return df
