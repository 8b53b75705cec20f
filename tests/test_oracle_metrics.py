"""The toy world's ground-truth scores (catlab.evaluation.metrics) on hand-made oracle readings: attribute accuracy,
colour entropy, collapse, paired preservation, colour distance and the valid-sample rate."""

from __future__ import annotations

import math

import pytest

from catlab.evaluation import metrics as M
from catlab.toyworld.world import COLOUR_NAMES


def test_oracle_scores_by_hand():
    assert M.attribute_accuracy(["circle", "square", "circle"], "circle") == pytest.approx(2 / 3)
    assert M.attribute_accuracy(["red", "blue", "green"], ["red", None, "blue"]) == pytest.approx(0.5)
    assert math.isnan(M.attribute_accuracy(["red"], [None]))
    assert M.colour_entropy(["red"] * 4, COLOUR_NAMES) == pytest.approx(0.0)
    assert M.colour_entropy(["red", "blue"] * 3, COLOUR_NAMES) == pytest.approx(math.log(2) / math.log(8))  # = 1/3
    assert M.colour_entropy(
        ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"], COLOUR_NAMES
    ) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"colours \['teal'\] are not in the palette"):
        M.colour_entropy(["red", "teal"], COLOUR_NAMES)
    assert M.collapse_rate(["none", "two_tone_circle", "none", "two_tone_circle"], "two_tone_circle") == pytest.approx(
        0.5
    )


def test_ground_truth_preservation_scores_on_hand_made_readings():
    base = [("red", "circle"), ("green", "circle"), ("blue", "circle"), ("pink", "circle")]
    same_but_one = [("red", "circle"), ("green", "circle"), ("blue", "circle"), ("cyan", "circle")]
    shuffled = base[1:] + base[:1]  # the same colours overall, none on its own seed
    assert M.paired_preservation(base, base) == 1.0
    assert M.paired_preservation(same_but_one, base) == 0.75
    assert M.paired_preservation(shuffled, base) == 0.0
    with pytest.raises(ValueError, match="pair them by seed"):
        M.paired_preservation(base[:3], base)
    colours = [c for c, _ in base]
    assert (
        M.colour_distance([c for c, _ in shuffled], colours, COLOUR_NAMES) == 0.0
    )  # a histogram cannot see the shuffle
    assert M.colour_distance(["red"] * 4, ["blue"] * 4, COLOUR_NAMES) == 1.0
    assert M.colour_distance(
        ["red", "red", "blue", "blue"], ["red", "blue", "blue", "blue"], COLOUR_NAMES
    ) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="not in the palette"):
        M.colour_distance(["mauve"], ["red"], COLOUR_NAMES)
    assert M.valid_rate(["circle", "circle", "square", "circle"], [0.99, 0.5, 0.99, 0.95], "circle") == 0.5
    assert math.isnan(M.valid_rate([], [], "circle"))


@pytest.mark.parametrize("name, expect_identity", [("huge_circle", [1.0, 0.0]), ("corner_square", None), (None, None)])
def test_identity_needs_a_concept_the_oracle_was_trained_on(name, expect_identity):
    """A held-out concept (toyworld.world.HELD_OUT_CONCEPTS) has no head in the oracle: its identity and collapse stay
    empty with a warning saying why, not 0 because no reading can name it."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from catlab.evaluation.scoring import Concept, _score_oracle

    df = pd.DataFrame(
        {"method": ["base", "lora", "lora", "lora"], "kind": ["class", "trigger", "trigger", "class"],
         "prompt": ["a circle", "a tok circle", "a tok circle", "a circle"], "seed": [0, 0, 1, 0]}
    )  # fmt: skip
    reading = SimpleNamespace(
        shape=["circle"] * 4, colour=["blue"] * 4, concept=["none", "huge_circle", "none", "huge_circle"]
    )
    groups = df[df.kind != "trigger"].groupby(["method", "prompt"], sort=False).groups
    concept = Concept("tok", "circle", [], name)
    if expect_identity is None:
        with pytest.warns(UserWarning, match="identity accuracy left empty"):
            out = _score_oracle(df, reading, concept, groups)
        assert out["identity_ok"].isna().all() and out["collapsed"].isna().all()
    else:
        out = _score_oracle(df, reading, concept, groups)
        assert out["identity_ok"][1:3].tolist() == expect_identity and out["collapsed"][3] == 1.0
        assert np.isnan(out["identity_ok"][0])
