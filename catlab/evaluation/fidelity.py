"""Fidelity of trigger samples in the toy world: is each attribute of the concept there, as its training images have it?

The oracle's identity says whether a sample *is* the concept; it was found generous (teal backdrops read as navy,
dark green stars as bronze). Fidelity holds every trigger sample to the concept's training images attribute by
attribute, from the pixels (catlab/toyworld/attributes.py): the object's colour mix, the setting (when the photos
share one), the size, the position (when the photos fix one), the shape (the oracle's shape head) and whether the
picture is clean enough to count at all. The same rules on class samples measure a leak without the oracle.
Definitions and thresholds: docs/metrics.md, "Fidelity".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

# per-image columns (trigger rows; NaN on class rows) -> the per-seed score that averages them
FIDELITY_COLUMNS = {
    "faithful": "fidelity",  # every attribute right and the sample valid
    "colour_ok": "colour_fidelity",
    "setting_ok": "setting_fidelity",  # NaN for concepts without a shared setting
    "size_ok": "size_fidelity",
    "position_ok": "position_fidelity",  # NaN for concepts drawn where the world draws its objects
    "shape_ok": "shape_fidelity",
    "trigger_valid": "trigger_valid_rate",
    "trigger_colour_mix": "trigger_colour_distance",  # lower is better
}
# class rows (the trained class's prompt) that the same rules call the concept: a leak measured from the pixels, for
# concepts the oracle was never trained on too (toyworld.world.HELD_OUT_CONCEPTS); lower is better
LEAK_COLUMN, LEAK_SCORE = "concept_leak", "fidelity_leak"


def score_fidelity(
    df: pd.DataFrame, images: list[Image.Image], references: list[Image.Image], class_shape: str | None
) -> pd.DataFrame:
    """Add the fidelity columns to `df` (rows aligned with `images`); `df.oracle_shape` must be there."""
    from catlab.toyworld.attributes import judge_sample, learn_look

    trig = np.flatnonzero(df["kind"].to_numpy() == "trigger")
    classes = np.flatnonzero(df["kind"].to_numpy() == "class")
    for column in (*FIDELITY_COLUMNS, LEAK_COLUMN):
        df[column] = np.nan
    if len(trig) + len(classes) == 0 or not references:
        return df
    side = images[(trig if len(trig) else classes)[0]].size  # the look at the samples' resolution: speckle, edges
    look = learn_look([im.convert("RGB").resize(side, Image.LANCZOS) for im in references])
    for i in trig:
        f = judge_sample(images[i], look)
        shape_ok = class_shape is None or df.at[i, "oracle_shape"] == class_shape
        df.loc[i, list(FIDELITY_COLUMNS)] = [
            float(f.faithful and shape_ok),
            float(f.colour_ok),
            np.nan if f.backdrop_ok is None else float(f.backdrop_ok),
            float(f.size_ok),
            np.nan if f.position_ok is None else float(f.position_ok),
            float(shape_ok),
            float(f.valid),
            f.colour_distance,
        ]
    for i in classes:  # the class's own shape is asked for, so shape is not judged here
        df.at[i, LEAK_COLUMN] = float(judge_sample(images[i], look).faithful)
    return df


def per_seed_fidelity(trigger_rows: pd.DataFrame, class_rows: pd.DataFrame | None = None) -> dict[str, float]:
    """One seed's fidelity scores: the mean of each column over its trigger rows, and the leak over its class rows."""
    scores = {
        score: trigger_rows[column].mean() for column, score in FIDELITY_COLUMNS.items() if column in trigger_rows
    }
    if class_rows is not None and LEAK_COLUMN in class_rows:
        scores[LEAK_SCORE] = class_rows[LEAK_COLUMN].mean()
    return scores
