"""Tables the notebooks show, built from evaluation results: the summary split into readable groups (03), the
ablation sweep joined with its scores (04), amortised CAT against the time it saves (04), and the cross-talk of a
multi-concept adapter (05)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from catlab.evaluation.metrics import collapse_rate, identity_rate, knowledge_preservation
from catlab.evaluation.scoring import BASE

EMBEDDING_GROUPS = (
    ("IS", "PS", "KP", "KPS"),
    ("DIV", "Vendi", "PRES"),
)  # identity and preservation; the class's spread


def summary_groups(summary: pd.DataFrame, per_table: int = 4) -> list[pd.DataFrame]:
    """`evaluate`'s summary as several narrow tables (one wide table overflows a page): the embedding scores in
    two groups, then the other scores (the oracle's, the real-world metrics) `per_table` at a time."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    grouped = {s for g in EMBEDDING_GROUPS for s in g}
    rest = [s for s in scores if s not in grouped]
    groups = [list(g) for g in EMBEDDING_GROUPS] + [rest[i : i + per_table] for i in range(0, len(rest), per_table)]
    tables = []
    for names in groups:
        cols = [c for c in summary.columns if c.rsplit("_", 1)[0] in names and c != "method"]
        if cols:
            tables.append(summary[["method", *cols]])
    return tables


def ablation_table(runs: pd.DataFrame, summary: pd.DataFrame, scores: Sequence[str]) -> pd.DataFrame:
    """One row per swept run (its settings, timings and mean scores) plus the base model's row; `sweep` names which
    setting the run varies ("reference" for the reference run). `runs` has a `name` per adapter."""
    means = summary.set_index("method")[[f"{s}_mean" for s in scores]].rename(columns=lambda c: c[: -len("_mean")])
    table = runs.drop(columns=[c for c in ("adapter",) if c in runs]).join(means, on="name")
    if BASE in means.index:
        table = pd.concat([table, means.loc[[BASE]].reset_index(names="name")], ignore_index=True)
    table["sweep"] = [n.split("=")[0] if "=" in n else n for n in table["name"]]
    return table


def amortisation_table(
    table: pd.DataFrame, reference: Mapping[str, Any], scores: Sequence[str] = ("IS", "KP", "KPS")
) -> pd.DataFrame:
    """Amortised CAT (`cat_every` = k) against the reference run (k = 1) and plain LoRA (λ = 0) at the reference's
    rank and steps: training time, the share of it saved, and the scores."""
    same_size = (table["rank"] == reference["rank"]) & (table["steps"] == reference["steps"])
    swept = table["sweep"].isin(["cat_every", "reference", "cat_lambda"])
    rows = table[
        swept & same_size & ((table["cat_lambda"] == reference["cat_lambda"]) | (table["cat_lambda"] == 0))
    ].copy()
    k1 = float(table.loc[table["name"] == "reference", "train_s"].iloc[0])
    rows["time saved vs k=1"] = 1 - rows["train_s"] / k1
    rows["cat_every"] = np.where(rows["cat_lambda"] == 0, "no CAT (λ=0)", rows["cat_every"].astype(int).astype(str))
    return rows[["name", "cat_every", "ms_per_step", "train_s", "time saved vs k=1", *scores]].reset_index(drop=True)


def crosstalk_table(
    images: Mapping[str, Mapping[str, Sequence[Image.Image]]], concepts: Mapping[str, Any], embedder, oracle: Any = None
) -> pd.DataFrame:
    """Per model, for each concept: KP of its class prompt against the base model's images (paired by seed); with the
    toy world's oracle also how often its trigger draws it (identity), how often its class prompt does (leak), and
    how much the class prompt takes on the *other* concepts (their probability under the oracle, their colours).

    images[model][prompt] are the images of each prompt on the same seeds, with a "base" model; `concepts` maps each
    concept's toy concept name (the oracle's columns need it) to its config (`trigger`, `class_word`).
    """
    from catlab.toyworld.oracle import CONCEPT_NAMES, read_images
    from catlab.toyworld.world import CONCEPTS

    rows = []
    for model, by_prompt in images.items():
        row = {"model": model}
        for c in concepts.values():
            p = f"a {c.class_word}"
            row[f"KP '{p}' ↑"] = knowledge_preservation(
                embedder.embed_images(by_prompt[p]), embedder.embed_images(images[BASE][p])
            )
        if oracle is not None:
            for name, c in concepts.items():
                trig = read_images(oracle, by_prompt[f"a {c.trigger} {c.class_word}"])
                cls = read_images(oracle, by_prompt[f"a {c.class_word}"])
                row[f"'{c.trigger}' draws {c.trigger} ↑"] = identity_rate(trig.concept, name)
                row[f"'a {c.class_word}' read as {c.trigger} ↓"] = collapse_rate(cls.concept, name)
                for other_name, other in ((n, o) for n, o in concepts.items() if n != name):
                    drawn = CONCEPTS[other_name]
                    row[f"'a {c.class_word}': P({other.trigger}) ↓"] = float(
                        cls.concept_prob[:, CONCEPT_NAMES.index(other_name)].mean()
                    )
                    row[f"'a {c.class_word}' in {other.trigger}'s colours ↓"] = float(
                        np.mean([x in (drawn.colour, drawn.second_colour) for x in cls.colour])
                    )
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
