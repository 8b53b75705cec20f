"""Several concepts in one model: adapters combined into one file (catlab.models.combine) and the multi-concept
scores (catlab.evaluation.multi_concept)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.lora_helpers import randomise_lora, unet_inputs


@pytest.fixture()
def two_adapters(toyworld_env, tmp_path):
    """Two random LoRAs of rank 4 on the tiny toy world, saved as catlab saves adapters."""
    from catlab.models import add_lora, load_base, save_lora

    paths = []
    for k, name in enumerate(("first", "second")):
        pipe = load_base("toyworld")
        add_lora(pipe.unet, rank=4, adapter_name=name)
        randomise_lora(pipe.unet, seed=k + 1)
        paths.append(save_lora(pipe, tmp_path / name, adapter_name=name).parent)
    return paths


def _unet_output(pipe, names, weights):
    from catlab.models import set_active_adapters

    set_active_adapters(pipe, names, weights)
    z, t, cond, _ = unet_inputs(pipe)
    with torch.no_grad():
        return pipe.unet(z, t, cond).sample


def test_a_summed_file_is_both_adapters_on_and_linear_is_not(two_adapters, tmp_path):
    from catlab.models import load_base, load_lora
    from catlab.models.combine import combine_adapters

    summed = combine_adapters(two_adapters, tmp_path / "sum", how="sum")
    first_only = combine_adapters(two_adapters, tmp_path / "first_only", weights=[1.0, 0.0], how="sum")
    linear = combine_adapters(two_adapters, tmp_path / "linear", how="linear")
    pipe = load_base("toyworld")
    for name, path in (("first", two_adapters[0]), ("second", two_adapters[1]), ("summed", summed),
                       ("first_only", first_only), ("linear", linear)):  # fmt: skip
        load_lora(pipe, path, name)
    both = _unet_output(pipe, ["first", "second"], [1.0, 1.0])
    first = _unet_output(pipe, ["first"], [1.0])
    assert torch.allclose(_unet_output(pipe, ["summed"], [1.0]), both, atol=1e-5)
    assert torch.allclose(_unet_output(pipe, ["first_only"], [1.0]), first, atol=1e-5)
    assert (both - first).abs().max() > 1e-2  # the second adapter does change the output
    assert (_unet_output(pipe, ["linear"], [1.0]) - both).abs().max() > 1e-3  # cross terms B_a A_b
    assert pipe.unet.peft_config["summed"].r == 8 and pipe.unet.peft_config["linear"].r == 4
    record = json.loads((summed / "catlab_adapter.json").read_text())
    assert record["combination"] == "sum" and record["combined_from"] == [str(p) for p in two_adapters]


def test_combining_refuses_what_it_cannot_do(two_adapters, tmp_path):
    from catlab.models.combine import combine_adapters

    with pytest.raises(ValueError, match="choose one of"):
        combine_adapters(two_adapters, tmp_path / "x", how="average")
    with pytest.raises(ValueError, match="two or more"):
        combine_adapters(two_adapters[:1], tmp_path / "x")
    with pytest.raises(ValueError, match="1 weights for 2 adapters"):
        combine_adapters(two_adapters, tmp_path / "x", weights=[1.0])
    (two_adapters[1] / "trigger_embeddings.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="trigger vectors"):
        combine_adapters(two_adapters, tmp_path / "x")
    (two_adapters[1] / "trigger_embeddings.safetensors").unlink()
    combine_adapters(two_adapters, tmp_path / "kept")
    with pytest.raises(FileExistsError):  # a file a user made is never overwritten silently
        combine_adapters(two_adapters, tmp_path / "kept")


def _rows(model, concept, kind, prompt, read, preserved=np.nan, identity=np.nan, seeds=None):
    return [
        {"method": model, "concept": concept, "kind": kind, "prompt": prompt, "seed": s, "oracle_concept": r,
         "preserved": preserved if np.isscalar(preserved) else preserved[s], "identity_ok": identity,
         "collapsed": float(r == concept) if kind == "class" else np.nan, "faithful": identity, "colour_distance": 0.1,
         "IS": 0.6 if kind == "trigger" else np.nan, "KP": np.nan if kind == "trigger" else 0.9 - 0.1 * s}
        for s, r in enumerate(read)
    ]  # fmt: skip


def test_the_multi_concept_table_counts_what_each_prompt_drew():
    from catlab.evaluation.multi_concept import multi_concept_table, untouched_by_prompt

    a, b = "circle_on_navy", "striped_square"
    rows = []
    for model, a_trigger in (("joint", [a, a, b, "none"]), ("single_a", [a, a, a, a])):
        rows += _rows(model, a, "trigger", "a pxl circle", a_trigger, identity=np.nan)
        rows += _rows(model, a, "class", "a circle", ["none", b, "none", "none"], preserved=[1, 0, 1, 1])
        rows += _rows(model, a, "held_out", "a triangle", ["none"] * 4, preserved=[1, 1, 0, 0])
        rows += _rows(model, b, "trigger", "a zwx square", [b, b, "none", "none"])
        rows += _rows(model, b, "class", "a square", ["none"] * 4, preserved=1.0)
        rows += _rows(model, b, "held_out", "a triangle", ["none"] * 4, preserved=[1, 1, 0, 0])
    df = pd.DataFrame(rows)
    trig = df["kind"] == "trigger"
    df.loc[trig, "identity_ok"] = (df.loc[trig, "oracle_concept"] == df.loc[trig, "concept"]).astype(float)
    table = multi_concept_table(df, {("joint", a): "single_a"}).set_index(["model", "concept"])
    joint_a = table.loc[("joint", a)]
    assert joint_a["identity"] == 0.5 and joint_a["identity_vs_single"] == 0.5
    assert joint_a["trigger_crosstalk"] == 0.25 and joint_a["class_crosstalk"] == 0.25
    assert joint_a["collapse_rate"] == 0.0 and joint_a["paired_preservation"] == 0.75
    assert joint_a["untouched_paired_preservation"] == 0.5 and joint_a["untouched_worst"] == 0.5
    assert np.isnan(table.loc[("joint", b), "identity_vs_single"])  # no reference given
    assert joint_a["IS"] == 0.6 and joint_a["KP"] == joint_a["untouched_KP"] == pytest.approx(0.75)
    by_prompt = untouched_by_prompt(df)
    assert list(by_prompt["model"]) == ["joint", "single_a"]  # each image once, though both concepts scored it
    assert by_prompt["paired_preservation"].tolist() == [0.5, 0.5]
    # a real base model has no oracle: the embedding scores stand alone
    no_oracle = df.drop(
        columns=["oracle_concept", "preserved", "identity_ok", "collapsed", "faithful", "colour_distance"]
    )
    assert list(multi_concept_table(no_oracle).columns) == ["model", "concept", "IS", "KP", "untouched_KP"]
    assert list(untouched_by_prompt(no_oracle).columns) == ["model", "prompt", "KP"]


def test_untouched_prompts_name_no_concept_of_the_set():
    from catlab.evaluation.multi_concept import untouched_prompts

    assert untouched_prompts(["circle_on_navy", "striped_square"]) == (
        "a triangle", "a star", "a circle on a dark background", "a square on a dark background")  # fmt: skip
    assert untouched_prompts(["circle_on_navy", "huge_circle"])[:3] == ("a square", "a triangle", "a star")


def test_every_model_is_scored_on_every_concept_with_shared_prompts_drawn_once(two_adapters, toyworld_env, tmp_path):
    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.multi_concept import evaluate_concepts, multi_concept_table
    from catlab.evaluation.scoring import Scorers
    from catlab.models.combine import combine_adapters
    from catlab.toyworld.assets import load_oracle

    summed = combine_adapters(two_adapters, tmp_path / "sum")
    sampling = EvalSampling(templates=("a {trigger} {class}",), seeds=2, trigger_seeds=1, held_out_seeds=1,
                            num_inference_steps=2)  # fmt: skip
    models = {"first": two_adapters[0], "summed": summed}
    concepts = ["circle_on_navy", "striped_square"]
    per_image = evaluate_concepts(models, concepts, sampling, tmp_path / "eval", Scorers(oracle=load_oracle()))
    assert set(per_image["concept"]) == set(concepts)
    assert set(per_image["method"]) == {"base", "first", "summed"}
    held = per_image[per_image["kind"] == "held_out"]
    assert set(held["prompt"]) == {
        "a triangle",
        "a star",
        "a circle on a dark background",
        "a square on a dark background",
    }
    drawn = list((tmp_path / "eval" / "images").rglob("a_triangle_*.png"))
    assert len(drawn) == 3  # base, first, summed: once each, not once per concept
    table = multi_concept_table(per_image, {("summed", c): "first" for c in concepts})
    assert len(table) == 3 * 2 and table["paired_preservation"].between(0, 1).all()
    with pytest.raises(ValueError, match="two or more distinct"):
        evaluate_concepts(models, ["circle_on_navy"], sampling, tmp_path / "eval")


def test_the_notebooks_grid_is_drawn_once_and_scored_from_the_same_files(
    two_adapters, toyworld_env, tmp_path, monkeypatch
):
    """05_multi_concept shows a grid, then scores: `draw_through_cache` draws the grid into evaluate's cache, its
    images are what `generate_methods` draws for the same adapters, and evaluate_concepts then draws only the rest."""
    from catlab.evaluation import images as eval_images
    from catlab.evaluation.images import EvalSampling, draw_through_cache
    from catlab.evaluation.multi_concept import evaluate_concepts
    from catlab.evaluation.scoring import Scorers
    from catlab.models import load_for_sampling, load_lora
    from catlab.toyworld.assets import load_oracle
    from catlab.widgets import generate_methods

    pipe = load_for_sampling("toyworld")
    sampling = EvalSampling(
        templates=("a {trigger} {class}",), seeds=(0, 1), held_out_seeds=(0, 1), num_inference_steps=2
    )
    prompts, seeds = ["a pxl circle", "a circle", "a triangle"], [0, 1]
    models = {"base": None, "first": two_adapters[0]}
    grid = draw_through_cache(pipe, models, prompts, seeds, sampling, tmp_path / "eval")
    direct = generate_methods(pipe, {"base": None, "first": ([load_lora(pipe, two_adapters[0], "direct")], [1.0])},
                              prompts, seeds, num_inference_steps=2)  # fmt: skip
    for name in models:
        for p, row in enumerate(grid[name]):
            for s, im in enumerate(row):
                assert im.tobytes() == direct[name][p][s].convert("RGB").tobytes(), (name, prompts[p], seeds[s])
    drawn, real_generate = [], eval_images.Sampler.generate

    def counted_generate(self, pipe, prompts_now, seeds_now, **settings):
        drawn.append((list(prompts_now), list(seeds_now)))
        return real_generate(self, pipe, prompts_now, seeds_now, **settings)

    monkeypatch.setattr(eval_images.Sampler, "generate", counted_generate)
    per_image = evaluate_concepts(models, ["circle_on_navy", "striped_square"], sampling, tmp_path / "eval",
                                  Scorers(oracle=load_oracle()), base="toyworld")  # fmt: skip
    drawn_prompts = {p for ps, _ in drawn for p in ps}
    assert drawn_prompts and not drawn_prompts & set(prompts), f"the grid's prompts were drawn again: {drawn}"
    assert set(prompts) <= set(per_image["prompt"])


def test_the_multi_concept_figure_has_a_panel_per_score_and_a_bar_per_model_and_concept():
    from catlab.widgets import multi_concept_figure

    table = pd.DataFrame(
        {"model": ["one", "one", "sum", "sum"], "concept": ["a", "b", "a", "b"],
         "identity_vs_single": [1.0, 0.5, 0.9, 0.2], "trigger_crosstalk": [0.0, 0.1, 0.0, 0.0],
         "paired_preservation": [0.8, 0.9, 0.7, 0.6], "untouched_worst": [0.5, 0.5, 0.4, 0.4]}
    )  # fmt: skip
    fig = multi_concept_figure(table)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["identity_vs_single", "trigger_crosstalk", "paired_preservation",
                                               "untouched_worst"]  # fmt: skip
    heights = sorted(p.get_height() for p in axes[0].patches)
    assert heights == [0.2, 0.5, 0.9, 1.0]  # 2 models x 2 concepts
    assert [line.get_ydata()[0] for line in axes[0].get_lines()] == [0.9]  # the bar, dashed
    assert not axes[0].texts
    empty = multi_concept_figure(table.assign(identity_vs_single=np.nan)).get_axes()[0]
    assert [t.get_text() for t in empty.texts] == ["no value: see the table"]  # not a blank panel


def test_catlab_eval_with_several_concepts_scores_every_model_on_each(two_adapters, toyworld_env, tmp_path, capsys):
    """A toy concept by name and an exported folder (its concept.json names trigger and class): one table row per
    model and concept, the prompts no concept names, and clear errors for flags that do not line up."""
    from catlab.cli import main
    from catlab.toyworld.world import export_concept

    export_concept("striped_square", tmp_path / "square")
    out = tmp_path / "eval"
    argv = ["eval", "--concept", "circle_on_navy", "--concept", str(tmp_path / "square"),
            "--adapter", f"first={two_adapters[0]}", "--adapter", f"second={two_adapters[1]}",
            "--seeds", "2", "--trigger-seeds", "1", "--held-out-seeds", "1", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--single", "circle_on_navy=first"]) == 0
    printed = capsys.readouterr().out
    assert "prompts no concept names" in printed and "multi_concept.csv" in printed
    table = pd.read_csv(out / "multi_concept.csv").set_index(["model", "concept"])
    concepts = ("circle_on_navy", "striped_square")
    assert set(table.index) == {(m, c) for m in ("base", "first", "second") for c in concepts}
    assert (table.loc["base", "paired_preservation"] == 1.0).all()  # the base model against itself
    assert (table.loc["base", "untouched_worst"] == 1.0).all()
    assert table.loc[("second", "striped_square"), ["identity_vs_single"]].isna().all()  # no --single for it
    untouched = pd.read_csv(out / "untouched.csv")
    assert set(untouched["prompt"]) == {"a triangle", "a star", "a circle on a dark background",
                                        "a square on a dark background"}  # fmt: skip
    assert set(pd.read_csv(out / "summary.csv")["concept"]) == set(concepts)
    assert set(pd.read_csv(out / "per_image.csv")["concept"]) == set(concepts)
    with pytest.raises(SystemExit, match="--trigger given 1 times for 2 --concept"):
        main([*argv, "--trigger", "pxl"])
    with pytest.raises(SystemExit, match="--single 'huge_circle=first'"):
        main([*argv, "--single", "huge_circle=first"])
