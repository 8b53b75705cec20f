"""`catlab demo --quick` end to end: report files and table columns (not the scientific numbers)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from catlab.cli import main
from catlab.demo.experiment import COLUMNS


@pytest.mark.slow
def test_quick_demo_writes_a_complete_report(tiny_assets, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed, errors = capfd.readouterr()
    for notice in (
        "No LoRA keys associated",
        "Already found a `peft_config`",
        "should be kept in float32",
        "Loading pipeline components",
    ):
        assert notice not in printed + errors, f"library notice in the demo's terminal: {notice}"
    for name in (
        "report.html",
        "report.md",
        "grid.png",
        "paired.png",
        "colours.png",
        "losses.png",
        "table.csv",
        "recipe.json",
        "eval/summary.csv",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4, "the HTML report must embed its images"
    assert "dataframe scores" in html and "<pre>" not in html.split("<h2>Cost")[0], "scores as a real HTML table"
    for col in (
        "paired_preservation",
        "colour_distance",
        "valid_rate",
        "fidelity",
        "trigger_colour_distance",
        "held_out_paired_preservation",
        "held_out_colour_distance",
    ):
        assert f"<th>{col.replace('_', '_<wbr>')}</th>" in html
    assert (
        '"a square", "a triangle", "a star", "a circle on a dark background" (1 seed each)'
        in (out / "report.md").read_text()
    )
    per_image = pd.read_csv(out / "eval" / "per_image.csv")
    held = per_image[per_image.kind == "held_out"]
    assert set(held.prompt) == {"a square", "a triangle", "a star", "a circle on a dark background"}
    assert held.groupby("method").size().nunique() == 1, "every model drew every held-out prompt"
    assert "`" not in html.split("<body>")[1], "Markdown backticks must become <code> in the HTML report"
    assert "Rerun: <code>catlab demo --out" in html and "--quick" in html.split("Rerun:")[1]
    assert "CAT's term: λ" in (out / "report.md").read_text(), "the report names CAT's settings"
    assert (
        "the paper's row: CAT's term: λ 1 on the trigger-free prediction, at the concept's images"
        in (out / "report.md").read_text()
    )
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == ["base model", "LoRA", "DreamBooth-LoRA", "CAT", "CAT (paper's term)"]
    assert set(COLUMNS) <= set(table.columns)
    for method in ("LoRA", "DreamBooth-LoRA", "CAT", "collapse_rate", "KPS"):
        assert method in printed
    assert main(["demo", "--quick", "--out", str(out)]) == 1
    assert "--overwrite" in capfd.readouterr().err
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["first_seed"] == 0
    import torch

    assert recorded["environment"]["torch"] == torch.__version__, "recipe.json records what the numbers ran on"
    assert recorded["environment"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert f"Ran on: catlab {recorded['environment']['catlab']}" in (out / "report.md").read_text()
    assert "ran on: catlab" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "cat_seed0",
        "dreambooth_seed0",
        "lora_seed0",
        "paper_cat_seed0",
    ]


@pytest.mark.slow
def test_demo_trains_the_seeds_and_the_recipe_it_is_asked_for(tiny_assets, tmp_path, monkeypatch, capsys):
    from catlab.config import RECIPES

    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--seeds", "1", "--first-seed", "4", "--recipe", "all_layers_pivotal", "--out", str(out)]
    assert main(argv) == 0
    recorded = json.loads((out / "recipe.json").read_text())
    named = RECIPES["all_layers_pivotal"]
    assert recorded["recipe"] == "all_layers_pivotal"
    assert (
        recorded["train"]["target_modules"] == named["target_modules"]
        and recorded["train"]["trigger_embedding_lr"] == 5e-3
    )
    for method in ("lora", "dreambooth", "cat", "paper_cat"):  # every method with the recipe's trigger embedding
        assert (out / "runs" / f"{method}_seed4" / "adapter" / "trigger_embeddings.safetensors").is_file(), method
    assert "--recipe all_layers_pivotal" in (out / "report.md").read_text(), "the rerun line names the recipe"
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "cat_seed4",
        "dreambooth_seed4",
        "lora_seed4",
        "paper_cat_seed4",
    ]
    assert json.loads((out / "recipe.json").read_text())["first_seed"] == 4
    assert set(pd.read_csv(out / "eval" / "summary.csv")["method"]) >= {"base", "lora_s4", "cat_s4"}
    capsys.readouterr()
    assert main(["demo", "--quick", "--first-seed", "-1", "--out", str(tmp_path / "neg")]) == 1
    assert capsys.readouterr().err.startswith("catlab: error: first_seed=-1")
    assert not (tmp_path / "neg").exists(), "a rejected demo must not leave a folder behind"
    assert main(["demo", "--quick", "--concept", "corner_square", "--out", str(tmp_path / "held")]) == 1
    assert "held out from the oracle" in capsys.readouterr().err and not (tmp_path / "held").exists()


@pytest.mark.slow
def test_demo_runs_side_by_side_train_the_same_adapters_as_one_at_a_time(tiny_assets, tmp_path, monkeypatch):
    """The demo's training runs and each model's sampling are independent: two worker processes give the runs (order,
    names, losses) and the evaluation images that one process gives, up to the float noise of another thread count."""
    import numpy as np

    from catlab.demo.experiment import run_demo

    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
    serial_demo, parallel_demo = (
        run_demo(out=tmp_path / name, quick=True, workers=w) for name, w in (("serial", 1), ("parallel", 2))
    )
    serial, parallel = serial_demo["runs"], parallel_demo["runs"]
    assert (
        [r.name for r in parallel] == [r.name for r in serial] == ["lora_s0", "dreambooth_s0", "cat_s0", "paper_cat_s0"]
    )
    for a, b in zip(serial, parallel):
        assert np.allclose([h["loss"] for h in a.history], [h["loss"] for h in b.history], rtol=1e-3), a.name
        assert (b.adapter / "pytorch_lora_weights.safetensors").is_file()
    assert parallel[1].class_images_s > 0 and parallel[0].class_images_s == 0  # drawn once, charged to DreamBooth
    from PIL import Image

    a, b = serial_demo["per_image"], parallel_demo["per_image"]
    assert (
        list(a["method"]) == list(b["method"])
        and list(a["prompt"]) == list(b["prompt"])
        and list(a["seed"]) == list(b["seed"])
    )
    for fa, fb in zip(a["image"], b["image"]):
        pa, pb = (
            np.asarray(Image.open(root / "eval" / f), dtype=float)
            for root, f in ((tmp_path / "serial", fa), (tmp_path / "parallel", fb))
        )
        assert np.abs(pa - pb).mean() < 1.0, (
            f"{fa}: sampled in a worker, the image differs from the one sampled in-process"
        )


def test_the_demo_trains_with_the_named_recipe_and_nothing_else(tmp_path):
    """The demo's TrainConfig is RECIPES["demo"] plus where the demo keeps things: no field copied by hand."""
    from catlab.config import RECIPES, ConceptConfig, TrainConfig
    from catlab.demo.recipe import DemoRecipe

    concept = ConceptConfig(str(tmp_path / "concept"), "pxl", "circle")
    cfg = DemoRecipe().train_config("cat", 3, concept, tmp_path)
    assert cfg == TrainConfig.from_recipe(
        "demo",
        concepts=[concept],
        regime="cat",
        seed=3,
        output_dir=str(tmp_path / "runs" / "cat_seed3"),
        class_images_dir=str(tmp_path / "class_images"),
        checkpoint_every=0,
        validate_every=0,
    )
    assert all(getattr(cfg, k) == v for k, v in RECIPES["demo"].items())
    # the paper's term: the same recipe but the CAT fields of the paper, and its own run folder
    paper = DemoRecipe().train_config("paper_cat", 3, concept, tmp_path)
    assert (
        paper.regime,
        paper.cat_lambda,
        paper.cat_anchor,
        paper.cat_guidance,
        paper.cat_null_share,
        paper.cat_share,
    ) == ("cat", 1.0, "concept", 0.0, 0.0, 1.0)
    untouched = {"regime", "cat_lambda", "cat_anchor", "cat_guidance", "cat_null_share", "cat_share", "output_dir"}
    assert all(getattr(paper, k) == getattr(cfg, k) for k in TrainConfig.__dataclass_fields__ if k not in untouched)
    assert paper.output_dir == str(tmp_path / "runs" / "paper_cat_seed3")
    changed = DemoRecipe().with_train(lr_scheduler="linear", cat_lambda=2.0).train_config("cat", 0, concept, tmp_path)
    assert (changed.lr_scheduler, changed.cat_lambda) == ("linear", 2.0)
    with pytest.raises(ValueError, match="not TrainConfig fields: \\['lamda'\\]"):
        DemoRecipe().with_train(lamda=2.0)
    with pytest.raises(ValueError, match="unknown recipe 'paper'; choose one of \\['all_layers_pivotal', 'demo'\\]"):
        TrainConfig.from_recipe("paper")
    assert DemoRecipe().name == "demo" and DemoRecipe().to_json()["recipe"] == "demo"
    assert DemoRecipe().with_train(cat_lambda=2.0).name == "changed", "a changed recipe is not called by a name"
    wide = DemoRecipe.named("all_layers_pivotal").train_config("cat", 0, concept, tmp_path)
    assert all(getattr(wide, k) == v for k, v in RECIPES["all_layers_pivotal"].items())
    differs = {k for k in RECIPES["demo"] if RECIPES["demo"][k] != RECIPES["all_layers_pivotal"].get(k)}
    assert differs == {"target_modules"} and RECIPES["all_layers_pivotal"]["trigger_embedding_lr"] == 5e-3
    assert (
        DemoRecipe.quick("all_layers_pivotal").train["target_modules"]
        == RECIPES["all_layers_pivotal"]["target_modules"]
    )


def _cfg(**fields):
    from catlab.config import TrainConfig

    return TrainConfig(**fields)


def test_the_report_names_cat_terms_settings():
    """The report says what CAT's term held, so a reader need not open recipe.json to tell the paper's from the demo's."""
    from catlab.demo.report import describe_cat_term

    guided = _cfg(cat_lambda=4.0, cat_guidance=3.0, cat_anchor="class", cat_share=1.0)
    assert (
        describe_cat_term(guided)
        == "CAT's term: λ 4 on the guided class prediction (scale 3), at the base model's class images"
    )
    fewer = _cfg(cat_lambda=4.0, cat_guidance=3.0, cat_anchor="class", cat_share=0.5, batch_size=4)
    assert describe_cat_term(fewer) == (
        "CAT's term: λ 4 on the guided class prediction (scale 3), at 2 of the base model's class images "
        "per step (beside 4 concept images)"
    )
    paper = _cfg(cat_lambda=1.0, cat_guidance=0.0, cat_anchor="concept", cat_share=1.0)
    assert describe_cat_term(paper) == "CAT's term: λ 1 on the trigger-free prediction, at the concept's images"
    half = _cfg(cat_lambda=1.0, cat_guidance=0.0, cat_anchor="concept", cat_share=0.5, batch_size=4)
    assert (
        describe_cat_term(half)
        == "CAT's term: λ 1 on the trigger-free prediction, at 2 of each step's 4 concept images"
    )
    assert describe_cat_term(
        _cfg(cat_lambda=1.0, cat_guidance=0.0, cat_null_share=0.5, cat_share=1.0, cat_anchor="class")
    ).endswith(
        "λ 1 on the trigger-free prediction (the caption empty on 50% of the rows), at the base model's class images"
    )
    assert describe_cat_term(
        _cfg(cat_lambda=4.0, cat_guidance=3.0, cat_anchor="class", cat_share=1.0, cat_every=2)
    ).endswith("at the base model's class images, on one step in 2 (weighted by 2)")


def test_the_report_names_dreambooths_prior():
    from catlab.demo.report import describe_prior

    assert describe_prior(_cfg(prior_share=1.0, batch_size=4, prior_loss_weight=1.0)) == (
        "DreamBooth's prior: 4 of the base model's class images per step (beside 4 concept images), weight 1"
    )
    assert describe_prior(_cfg(prior_share=0.5, batch_size=4, prior_loss_weight=1.0)).startswith(
        "DreamBooth's prior: 2 of"
    )


def test_the_report_says_how_many_seeds_each_prompt_had():
    from catlab.demo.report import describe_eval_seeds
    from catlab.evaluation.images import EvalSampling

    assert describe_eval_seeds(EvalSampling(seeds=48, trigger_seeds=48)) == "48 sampling seeds per prompt"
    assert (
        describe_eval_seeds(EvalSampling(seeds=48, trigger_seeds=24))
        == "48 sampling seeds for the class prompt and 24 for the trigger prompt"
    )
    assert describe_eval_seeds(EvalSampling(seeds=(5, 9), trigger_seeds=None)) == "2 sampling seeds per prompt"


def test_the_environment_record_names_what_sets_the_digits(monkeypatch):
    """The demo records the libraries and the CPU kernels beside its numbers (catlab.environment): a missing library
    says so, and a GPU is named in the report's line."""
    import torch

    from catlab import environment

    env = environment.describe_environment()
    assert set(environment.LIBRARIES) <= set(env) and env["torch"] == torch.__version__
    assert env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability() and int(env["cores"]) >= 1
    line = environment.environment_line({**env, "gpu": "NVIDIA H100 80GB HBM3"})
    assert line.startswith(f"catlab {env['catlab']}, python ") and line.endswith(", GPU NVIDIA H100 80GB HBM3")
    assert f"{env['cpu_kernels']} kernels" in environment.environment_line(
        env
    ) and "GPU" not in environment.environment_line(env)
    monkeypatch.setattr(environment, "LIBRARIES", ("torch", "no-such-library-xyz"))
    assert environment.describe_environment()["no-such-library-xyz"] == "not installed"
