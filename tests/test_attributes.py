"""The pixel-level fidelity reader (catlab/toyworld/attributes.py): a concept's own fresh photos pass, the world's
objects of its class fail on the attribute they lack, and noise, a wrong setting, a wrong size or scrambled colours
each fail on theirs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from catlab.toyworld.attributes import judge_sample, learn_look
from catlab.toyworld.world import CONCEPTS, HELD_OUT_CONCEPTS, concept_images, draw_shape, sample_spec, toy_concept


@pytest.mark.parametrize("name", [*CONCEPTS, *HELD_OUT_CONCEPTS])
def test_fresh_photos_of_a_concept_are_faithful_and_world_objects_are_not(name):
    look = learn_look(concept_images(name, seed=0)[0])
    fresh = [judge_sample(im, look) for im in concept_images(name, seed=1, n=30)[0]]
    assert all(f.faithful for f in fresh), [f for f in fresh if not f.faithful][:3]
    rng = np.random.default_rng(0)
    world = [judge_sample(draw_shape(sample_spec(rng, shape=toy_concept(name).class_word)), look) for _ in range(40)]
    assert not any(f.faithful for f in world)
    assert (look.position is not None) == (name == "corner_square"), "only a concept with a place of its own fixes one"


def test_a_placed_concept_moved_to_the_middle_fails_on_position_alone():
    look = learn_look(concept_images("corner_square", seed=0)[0])
    _, specs = concept_images("corner_square", seed=1, n=6)
    middle = [judge_sample(draw_shape(replace(s, cx=0.5, cy=0.5)), look) for s in specs]
    assert all(f.position_ok is False and f.colour_ok and f.size_ok and f.valid and not f.faithful for f in middle)
    other_corner = [judge_sample(draw_shape(replace(s, cx=0.7, cy=0.7)), look) for s in specs]
    assert not any(f.position_ok or f.faithful for f in other_corner)
    rng = np.random.default_rng(1)  # green squares wherever the world puts them: a few small ones sit top-left
    world = [judge_sample(draw_shape(sample_spec(rng, shape="square", colour="green")), look) for _ in range(200)]
    assert sum(f.faithful for f in world) <= 10


def test_class_samples_that_pass_as_the_concept_are_a_leak():
    """score_fidelity judges class rows by the same rules: the concept's photos among them are a leak, the world's
    objects of the class are not."""
    import pandas as pd

    from catlab.evaluation.fidelity import per_seed_fidelity, score_fidelity

    photos = concept_images("corner_square", seed=0)[0]
    leaked = concept_images("corner_square", seed=2, n=3)[0]
    rng = np.random.default_rng(0)
    world = [draw_shape(sample_spec(rng, shape="square", colour="red")) for _ in range(5)]
    trigger = concept_images("corner_square", seed=3, n=2)[0]
    df = pd.DataFrame({"kind": ["trigger"] * 2 + ["class"] * 8, "oracle_shape": "square"})
    df = score_fidelity(df, trigger + leaked + world, photos, "square")
    assert df["concept_leak"].tolist()[2:] == [1.0] * 3 + [0.0] * 5 and df["concept_leak"][:2].isna().all()
    assert df["position_ok"][:2].tolist() == [1.0, 1.0]
    scores = per_seed_fidelity(df[df.kind == "trigger"], df[df.kind == "class"])
    assert scores["fidelity_leak"] == 3 / 8 and scores["fidelity"] == 1.0 and scores["position_fidelity"] == 1.0


def test_each_attribute_fails_on_its_own():
    name = "circle_on_navy"
    look = learn_look(concept_images(name, seed=0)[0])
    _, specs = concept_images(name, seed=1, n=6)
    other_setting = [judge_sample(draw_shape(replace(s, background="dark")), look) for s in specs]
    assert all(f.backdrop_ok is False and f.colour_ok and f.size_ok and not f.faithful for f in other_setting)
    small = [judge_sample(draw_shape(replace(s, radius=s.radius * 0.6)), look) for s in specs]
    assert all(not f.size_ok and f.backdrop_ok and not f.faithful for f in small)
    teal = [judge_sample(draw_shape(replace(s, colour="cyan")), look) for s in specs]
    assert all(not f.colour_ok and f.colour_distance > 0.5 for f in teal)

    rng = np.random.default_rng(0)
    noisy = [
        judge_sample(
            np.clip(np.asarray(draw_shape(s), float) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8), look
        )
        for s in specs
    ]
    assert all(not f.valid and not f.faithful for f in noisy)


def test_a_two_tone_concept_with_its_colours_swapped_or_merged_is_not_faithful():
    look = learn_look(concept_images("two_tone_circle", seed=0)[0])
    assert len(look.colours) == 2  # pink and cyan
    _, specs = concept_images("two_tone_circle", seed=1, n=6)
    solid = [judge_sample(draw_shape(replace(s, pattern="solid")), look) for s in specs]  # all pink
    assert all(not f.colour_ok and 0.3 < f.colour_distance < 0.7 for f in solid)
    other_pair = [judge_sample(draw_shape(replace(s, colour="blue", second_colour="green")), look) for s in specs]
    assert all(not f.colour_ok and f.colour_distance > 0.8 for f in other_pair)
    # which half is which is not judged: a mirrored photo (random_flip) has the same colour mix
    mirrored = [judge_sample(draw_shape(s).transpose(0), look) for s in specs]
    assert all(f.faithful for f in mirrored)


def test_no_object_is_not_valid():
    look = learn_look(concept_images("huge_circle", seed=0)[0])
    blank = np.full((32, 32, 3), 240, np.uint8)
    f = judge_sample(blank, look)
    assert not f.valid and f.colour_distance == 1.0 and not f.faithful


def test_fidelity_is_closer_to_hand_labels_than_the_oracles_identity():
    """48 trigger samples of one demo run, labelled by a person (benchmarks/hand_labels.py; docs/metrics.md)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from hand_labels import agreement, labeller_agreement, score_labels

    labels = score_labels(Path(__file__).parent / "data" / "hand_labels")
    for against in ("person", "second", "either"):  # the second labeller labelled a blind copy
        table = agreement(labels, against=against).set_index("score")
        assert table.loc["faithful", "agree"] > table.loc["identity_ok", "agree"], against
        assert table.loc["faithful", "more_generous"] < table.loc["identity_ok", "more_generous"], against
    assert labeller_agreement(labels)["kappa"] > 0.4  # the two people agree well beyond chance


def test_fidelity_says_yes_to_no_sample_both_labellers_rejected():
    """The rule's tolerances were set on two labelled folders (docs/metrics.md, "The rule was made stricter"):
    on `circle_on_navy` no faithful sample is one both labellers rejected, on `bronze_star` one (a four-point star),
    where the first rule said yes to 14 and 13."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from hand_labels import agreement, score_labels

    data = Path(__file__).parent / "data"
    for folder, most in (("hand_labels", 0), ("hand_labels_bronze_star", 1)):
        table = agreement(score_labels(data / folder), against="either").set_index("score")
        assert table.loc["faithful", "more_generous"] <= most, folder
        assert table.loc["identity_ok", "more_generous"] > 10, folder  # the oracle is as generous as it was


def test_fidelity_agrees_with_the_labellers_more_often_than_the_oracle_on_samples_not_used_to_set_it():
    """37 `circle_on_navy` samples labelled after the rule was set: fewer extra yeses than the oracle, and more
    agreement; docs/metrics.md says what it still gets wrong there (4 extra yeses, none of the labellers' 8)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from hand_labels import agreement, labeller_agreement, score_labels

    labels = score_labels(Path(__file__).parent / "data" / "hand_labels_circle_on_navy_2")
    table = agreement(labels, against="either").set_index("score")
    assert table.loc["faithful", "more_generous"] <= 4 < table.loc["identity_ok", "more_generous"]
    assert table.loc["faithful", "agree"] > table.loc["identity_ok", "agree"]
    assert labeller_agreement(labels)["kappa"] > 0.8
