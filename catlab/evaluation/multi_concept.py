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
from catlab.evaluation.scoring import BASE
from catlab.toyworld.world import CONCEPTS, SHAPES

# per (model, concept) -> higher is better
MULTI_SCORES = {
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


def untouched_prompts(concepts: Sequence[str], settings: Sequence[str] = ("a {class} on a dark background",)) -> tuple:
    """Prompts no concept of the set names: the world's classes none of them is, and each concept's class in the
    `settings` ({class} filled in), in that order, without repeats."""
    classes = list(dict.fromkeys(CONCEPTS[c].class_word for c in concepts))
    prompts = [f"a {shape}" for shape in SHAPES if shape not in classes]
    prompts += [s.format(**{"class": w}) for s in settings for w in classes]
    return tuple(dict.fromkeys(prompts))


def evaluate_concepts(
    models: Mapping[str, str | Path | None],
    concepts: Sequence[str],
    sampling: EvalSampling,
    out_dir: str | Path,
    scorers: Any = None,
    base: Any = "toyworld",
) -> pd.DataFrame:
    """`evaluate`'s per-image table for every model on every toy concept of the set, with a `concept` column. Each
    concept's evaluation draws the prompts no concept names as its held-out prompts; the images of a prompt two
    concepts share are drawn once (one cache under out_dir)."""
    from catlab.evaluation.protocol import evaluate

    unknown = [c for c in concepts if c not in CONCEPTS]
    if unknown or len(set(concepts)) != len(concepts) or len(concepts) < 2:
        raise ValueError(
            f"evaluate_concepts: pass two or more distinct toy concepts of {sorted(CONCEPTS)}; got {concepts}"
        )
    sampling = replace(sampling, held_out=untouched_prompts(concepts))
    tables = []
    for name in concepts:
        result = evaluate(base, dict(models), name, sampling=sampling, scorers=scorers, out_dir=out_dir)
        tables.append(result.per_image.assign(concept=name))
    return pd.concat(tables, ignore_index=True)


def multi_concept_table(
    per_image: pd.DataFrame, single_of: Mapping[tuple[str, str], str] | None = None
) -> pd.DataFrame:
    """One row per (model, concept) with MULTI_SCORES; `single_of[(model, concept)]` names the model whose identity on
    that concept is the reference (the same method's single-concept adapter); NaN where none is given. Needs the
    oracle's columns."""
    concepts = list(dict.fromkeys(per_image["concept"]))
    rows = []
    for (model, concept), g in per_image.groupby(["method", "concept"], sort=False):
        trigger, cls = g[g["kind"] == "trigger"], g[g["kind"] == "class"]
        others = [c for c in concepts if c != concept]
        held = g[g["kind"] == HELD_OUT].groupby("prompt", sort=False)["preserved"].mean()
        rows.append(
            {
                "model": model,
                "concept": concept,
                "identity": trigger["identity_ok"].mean(),
                "fidelity": trigger["faithful"].mean() if "faithful" in trigger else np.nan,
                "trigger_crosstalk": max((trigger["oracle_concept"] == o).mean() for o in others),
                "class_crosstalk": max((cls["oracle_concept"] == o).mean() for o in others),
                "collapse_rate": cls["collapsed"].mean(),
                "paired_preservation": cls["preserved"].mean(),
                "untouched_paired_preservation": held.mean() if len(held) else np.nan,
                "untouched_worst": held.min() if len(held) else np.nan,
            }
        )
    table = pd.DataFrame(rows)
    identity = table.set_index(["model", "concept"])["identity"]
    references = [(single_of or {}).get((r.model, r.concept)) for r in table.itertuples()]
    table["identity_vs_single"] = [
        _ratio(r.identity, identity.get((ref, r.concept)) if ref else None)
        for r, ref in zip(table.itertuples(), references)
    ]
    return table[["model", "concept", *MULTI_SCORES]]


def _ratio(value: float, reference: Any) -> float:
    if reference is None or not np.isfinite(reference) or reference == 0:
        return np.nan
    return float(value / reference)


def untouched_by_prompt(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per model and prompt no concept names: paired preservation and colour distance against the base model (each
    image once, though every concept's evaluation scored it)."""
    rows = per_image[(per_image["kind"] == HELD_OUT) & (per_image["method"] != BASE)]
    rows = rows.drop_duplicates(["method", "prompt", "seed"])
    return (
        rows.groupby(["method", "prompt"], sort=False)
        .agg(paired_preservation=("preserved", "mean"), colour_distance=("colour_distance", "first"))
        .reset_index()
        .rename(columns={"method": "model"})
    )
