"""Preservation beyond the trained class: the prompts no concept names (other classes, other settings and sizes),
drawn by every model on the same seeds as the base model, and scored as the class prompt is: KP, paired preservation
and colour distance against the base model's image of the same prompt and seed (docs/metrics.md, "Held out").

A LoRA is one set of weights for every prompt: a term that holds the concept's class may leave the rest of the model
free to drift, and only prompts nobody trained on show it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from catlab.toyworld.world import SHAPES

HELD_OUT = "held_out"  # the `kind` of a held-out row in evaluate's per-image table
# summary score -> higher is better
HELD_OUT_SCORES = {
    "held_out_KP": True,
    "held_out_paired_preservation": True,
    "held_out_colour_distance": False,
}


def other_classes(class_word: str) -> tuple[str, ...]:
    """The toy world's classes that are not `class_word`, as prompts ("a square", ...): what no toy concept names."""
    return tuple(f"a {shape}" for shape in SHAPES if shape != class_word)


def per_seed_held_out(rows: pd.DataFrame) -> dict[str, float]:
    """One (method, seed)'s held-out scores: the mean KP and, with the oracle, paired preservation of its rows."""
    if rows.empty:
        return {}
    out = {"held_out_KP": rows["KP"].mean()}
    if "preserved" in rows:
        out["held_out_paired_preservation"] = rows["preserved"].mean()
    return out


def knowledge_half(kp: float, held_out_kp: float | None) -> float:
    """KPS's knowledge-preservation half: the class prompts' KP, averaged with the held-out prompts' when there are
    any (the trained class and everything else weigh the same)."""
    if held_out_kp is None or np.isnan(held_out_kp):
        return kp
    return (kp + held_out_kp) / 2


def held_out_colour_distances(df: pd.DataFrame, method: str) -> pd.Series:
    """Colour distance to the base model per held-out prompt of `method` (a set score: one value per prompt)."""
    rows = df[(df["method"] == method) & (df["kind"] == HELD_OUT)]
    if rows.empty or "colour_distance" not in rows:
        return pd.Series(dtype=float)
    return rows.groupby("prompt", sort=False)["colour_distance"].first()


def preservation_by_prompt(df: pd.DataFrame, family_of=lambda m: m) -> pd.DataFrame:
    """Per method (or family: `family_of(method)`, e.g. training seeds pooled) and trigger-free prompt, the class's
    and each held-out one: paired preservation and colour distance against the base model, and KP. Needs the
    oracle's columns (`preserved`, `colour_distance`)."""
    rows = df[df["kind"].isin(["class", HELD_OUT])].assign(family=lambda d: d["method"].map(family_of))
    per_run = rows.groupby(["family", "method", "kind", "prompt"], sort=False).agg(
        paired_preservation=("preserved", "mean"), colour_distance=("colour_distance", "first"), KP=("KP", "mean")
    )
    table = per_run.groupby(["family", "kind", "prompt"], sort=False).mean().reset_index()
    return table.rename(columns={"family": "method"})
