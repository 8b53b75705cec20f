"""Several concepts in one model: each trigger against its own single-concept adapter, cross-talk between the
concepts, and what no concept names (docs/metrics.md, "Several concepts").

A model here is an adapter folder: one adapter trained on several concepts, or separately trained adapters written
as one (`catlab.models.combine`). Every model is evaluated on every concept with `evaluate` (same seeds, the base
model beside it, one image cache), so each concept's trigger, its class and the prompts no concept names are scored
exactly as for a single concept; this module puts the per-concept results side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from catlab.evaluation.held_out import HELD_OUT
from catlab.evaluation.images import EvalSampling
from catlab.evaluation.scoring import BASE, Concept
from catlab.files import write_csv_atomic
from catlab.toyworld.world import CONCEPTS, SHAPES

# per (model, concept) -> higher is better; the first three need only the embedder, the rest the toy world's oracle
MULTI_SCORES = {
    "IS": True,  # the trigger's images against the concept's references (embedding similarity)
    "KP": True,  # the class prompt's images against the base model's, seed by seed (embedding similarity)
    "untouched_KP": True,  # the same over prompts no concept names
    "identity": True,  # the concept's trigger draws it (the oracle)
    "identity_vs_single": True,  # identity / the same method's single-concept adapter's on this concept
    "fidelity": True,  # every attribute of the concept there (catlab.evaluation.fidelity)
    "trigger_crosstalk": False,  # the trigger draws another concept of the set (the most-drawn other one)
    "class_crosstalk": False,  # the concept's class prompt draws another concept of the set
    "collapse_rate": False,  # the class prompt draws this concept
    "paired_preservation": True,  # class samples that keep the base model's shape and colour, seed by seed
    "untouched_paired_preservation": True,  # the same over prompts no concept names (mean over the prompts)
    "untouched_worst": True,  # the lowest of those prompts
}
ORACLE_SCORES = tuple(list(MULTI_SCORES)[3:])


def untouched_prompts(concepts: Sequence[Any], settings: Sequence[str] = ("a {class} on a dark background",)) -> tuple:
    """Prompts no concept of the set names: the world's classes none of them is, and each concept's class in the
    `settings` ({class} filled in), in that order, without repeats. Concepts are toy names or `Concept`s."""
    classes = list(dict.fromkeys(CONCEPTS[c].class_word if isinstance(c, str) else c.class_word for c in concepts))
    prompts = [f"a {shape}" for shape in SHAPES if shape not in classes]
    prompts += [s.format(**{"class": w}) for s in settings for w in classes]
    return tuple(dict.fromkeys(prompts))


def concept_label(concept: Concept) -> str:
    """The name a concept goes by in the tables: its toy name, else its trigger."""
    return concept.name or concept.trigger


def evaluate_concepts(
    models: Mapping[str, str | Path | None],
    concepts: Sequence[Any],
    sampling: EvalSampling,
    out_dir: str | Path,
    scorers: Any = None,
    base: Any = "toyworld",
) -> pd.DataFrame:
    """`evaluate`'s per-image table for every model on every concept of the set, with a `concept` column.

    concepts: toy concept names, folders with a concept.json, or `Concept`s (`load_concept(folder, trigger,
    class_word)`). Each concept's evaluation draws the same held-out prompts: `sampling.held_out` when given, else
    the prompts no concept of the set names (`untouched_prompts`); the images of a prompt two concepts share are
    drawn once (one cache under out_dir). Writes out_dir/per_image.csv (every concept) and summary.csv (a row per
    model and concept)."""
    from catlab.evaluation.protocol import evaluate, load_concept

    loaded = [load_concept(c) for c in concepts]
    labels = [concept_label(c) for c in loaded]
    if len(loaded) < 2 or len(set(labels)) != len(labels):
        raise ValueError(
            f"evaluate_concepts: pass two or more distinct concepts (toy names such as {sorted(CONCEPTS)[:3]}, "
            f"folders with a concept.json, or Concepts with their own triggers); got {labels}"
        )
    sampling = replace(sampling, held_out=tuple(sampling.held_out) or untouched_prompts(loaded))
    tables, summaries = [], []
    for label, concept in zip(labels, loaded):
        result = evaluate(base, dict(models), concept, sampling=sampling, scorers=scorers, out_dir=out_dir)
        tables.append(result.per_image.assign(concept=label))
        summaries.append(result.summary.assign(concept=label))
    per_image = pd.concat(tables, ignore_index=True)
    write_csv_atomic(Path(out_dir) / "per_image.csv", per_image)  # evaluate wrote the last concept's only
    write_csv_atomic(Path(out_dir) / "summary.csv", pd.concat(summaries, ignore_index=True))
    return per_image


def multi_concept_table(
    per_image: pd.DataFrame, single_of: Mapping[tuple[str, str], str] | None = None
) -> pd.DataFrame:
    """One row per (model, concept) with MULTI_SCORES; `single_of[(model, concept)]` names the model whose identity on
    that concept is the reference (the same method's single-concept adapter); NaN where none is given. Without the
    oracle's columns (a real base model) the oracle's scores are left out."""
    with_oracle = "identity_ok" in per_image
    rows = [
        _scores_of(model, concept, g, per_image["concept"].unique(), with_oracle)
        for (model, concept), g in per_image.groupby(["method", "concept"], sort=False)
    ]
    table = pd.DataFrame(rows)
    if with_oracle:
        identity = table.set_index(["model", "concept"])["identity"]
        references = [(single_of or {}).get((r.model, r.concept)) for r in table.itertuples()]
        table["identity_vs_single"] = [
            _ratio(r.identity, identity.get((ref, r.concept)) if ref else None)
            for r, ref in zip(table.itertuples(), references)
        ]
    return table[["model", "concept", *(s for s in MULTI_SCORES if s in table)]]


def _scores_of(model: str, concept: str, g: pd.DataFrame, concepts: Sequence[str], with_oracle: bool) -> dict:
    """One model's scores on one concept, from that concept's rows of the per-image table."""
    trigger, cls, held = g[g["kind"] == "trigger"], g[g["kind"] == "class"], g[g["kind"] == HELD_OUT]
    row = {"model": model, "concept": concept, "IS": trigger["IS"].mean(), "KP": cls["KP"].mean()}
    row["untouched_KP"] = held["KP"].mean() if len(held) else np.nan
    if not with_oracle:
        return row
    others = [c for c in concepts if c != concept]
    by_prompt = held.groupby("prompt", sort=False)["preserved"].mean()
    return row | {
        "identity": trigger["identity_ok"].mean(),
        "fidelity": trigger["faithful"].mean() if "faithful" in trigger else np.nan,
        "trigger_crosstalk": max((trigger["oracle_concept"] == o).mean() for o in others),
        "class_crosstalk": max((cls["oracle_concept"] == o).mean() for o in others),
        "collapse_rate": cls["collapsed"].mean(),
        "paired_preservation": cls["preserved"].mean(),
        "untouched_paired_preservation": by_prompt.mean() if len(by_prompt) else np.nan,
        "untouched_worst": by_prompt.min() if len(by_prompt) else np.nan,
    }


def _ratio(value: float, reference: Any) -> float:
    if reference is None or not np.isfinite(reference) or reference == 0:
        return np.nan
    return float(value / reference)


def untouched_by_prompt(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per model and prompt no concept names: KP and, with the oracle, paired preservation and colour distance against
    the base model (each image once, though every concept's evaluation scored it)."""
    rows = per_image[(per_image["kind"] == HELD_OUT) & (per_image["method"] != BASE)]
    rows = rows.drop_duplicates(["method", "prompt", "seed"])
    scores = {"KP": ("KP", "mean")}
    if "preserved" in rows:
        scores |= {"paired_preservation": ("preserved", "mean"), "colour_distance": ("colour_distance", "first")}
    return (
        rows.groupby(["method", "prompt"], sort=False).agg(**scores).reset_index().rename(columns={"method": "model"})
    )
