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
