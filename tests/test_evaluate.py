"""evaluate() with a fake deterministic generator: tables, files, caching, errors, oracle scores, trigger seeds; and
the `catlab eval` CLI sharing a real pipeline's image cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from eval_fakes import FakePipe, evaluate_with, fake_activate, fake_generate, mean_colour, solid, text_colour

from catlab.evaluation import images
from catlab.evaluation import metrics as M
from catlab.evaluation import protocol as E
from catlab.evaluation import scoring as S
from catlab.evaluation import summary as summary_tables
from catlab.evaluation.embedders import CallableEmbedder
from catlab.toyworld.oracle import CONCEPT_NAMES, OracleReading
from catlab.toyworld.world import COLOUR_NAMES


@pytest.fixture
def adapters(tmp_path):
    for name in ("cat", "drift"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "pytorch_lora_weights.safetensors").write_bytes(name.encode())
    return {"cat": tmp_path / "adapters" / "cat", "drift": tmp_path / "adapters" / "drift", "same": None}


def run_eval(out_dir, adapters, embedder=None, **kw):
    refs = [solid((245, 120, 190)), solid((240, 125, 185))]
    kw = {
        "templates": ["a {trigger} {class}", "a red {trigger} {class}", "a {trigger} {class} on a dark background"],
        "seeds": 4,
        "generate_fn": fake_generate,
        "activate_fn": fake_activate,
        "progress": False,
        **kw,
    }
    embedder = embedder or CallableEmbedder(mean_colour, text_fn=text_colour)
    return evaluate_with(FakePipe(), adapters, refs, embedder=embedder, out_dir=out_dir, **kw)


def test_evaluate_scores_tables_and_files(tmp_path, adapters):
    df, summary = run_eval(tmp_path / "eval", adapters)
    assert len(df) == 4 * 3 * 2 * 4  # methods x templates x (trigger, class) x seeds
    assert {"method", "kind", "prompt", "seed", "image", "IS", "PS", "KP", "PRES", "DIV", "Vendi"} <= set(df.columns)
    assert set(df.loc[df.kind == "class", "prompt"]) == {"a circle", "a red circle", "a circle on a dark background"}
    s = summary.set_index("method")
    assert list(s.index) == ["base", "cat", "drift", "same"]
    assert s.loc["base", "KP_mean"] == pytest.approx(1.0) and s.loc["same", "KP_mean"] == pytest.approx(1.0)
    assert s.loc["same", "PRES_mean"] == pytest.approx(
        s.loc["base", "PRES_mean"]
    )  # the base model as an adapter changes nothing
    assert s.loc["cat", "IS_mean"] > s.loc["base", "IS_mean"]  # it learnt the concept...
    assert s.loc["cat", "KP_mean"] > s.loc["drift", "KP_mean"]  # ...without forgetting the class, unlike drift
    assert s.loc["drift", "PRES_mean"] > s.loc["cat", "PRES_mean"]  # drift's class prompts collapse onto the concept
    assert s.loc["cat", "KPS_mean"] > s.loc["drift", "KPS_mean"]
    for col in ("IS", "KP", "KPS", "PRES"):
        assert summary[f"{col}_mean"].between(0, 1).all()
    assert (s["n_seeds"] == 4).all() and np.isfinite(s.loc["cat", "IS_ci95"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "eval" / "summary.csv"), summary, check_dtype=False)
    assert (tmp_path / "eval" / "per_image.csv").is_file() and (tmp_path / "eval" / df.image[0]).is_file()
    html = summary_tables.style_summary(summary).to_html()
    assert "KPS ↑" in html and "PRES ↓" in html and "±" in html


def test_evaluate_is_deterministic(tmp_path, adapters):
    a, _ = run_eval(tmp_path / "a", adapters)
    b, _ = run_eval(tmp_path / "b", adapters)
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_reuses_cached_images_and_embeddings(tmp_path, adapters):
    calls = []

    def counted(images):
        calls.append(len(images))
        return mean_colour(images)

    emb = CallableEmbedder(counted, text_fn=text_colour)
    fake_generate.calls = 0
    first, _ = run_eval(tmp_path / "eval", adapters, embedder=emb)
    n_gen, n_emb = fake_generate.calls, len(calls)
    assert n_gen == 3  # base (shared by 'same'), cat, drift
    second, _ = run_eval(tmp_path / "eval", adapters, embedder=emb)
    assert fake_generate.calls == n_gen and len(calls) == n_emb  # nothing generated or embedded again
    pd.testing.assert_frame_equal(first, second)
    third, _ = run_eval(
        tmp_path / "eval", adapters, embedder=emb, num_inference_steps=3
    )  # other settings: other images
    assert fake_generate.calls == n_gen + 3


def test_evaluate_with_an_oracle(tmp_path, adapters):
    def oracle(images):  # reads pinkish images as the concept, everything else by its strongest channel
        rgb = mean_colour(images)
        pink = [bool(r > 0.3 and g < 0.1 and b > 0.05) for r, g, b in rgb]
        colour = ["pink" if p else ("red", "green", "blue")[int(np.argmax(c))] for p, c in zip(pink, rgb)]
        return OracleReading(
            shape=["circle"] * len(images),
            colour=colour,
            concept=["two_tone_circle" if p else "none" for p in pink],
            concept_prob=np.zeros((len(images), 4)),
        )

    df, summary = run_eval(
        tmp_path / "eval",
        {"drift": adapters["drift"]},
        oracle=oracle,
        templates=["a {trigger} {class}", "a red {trigger} {class}"],
    )
    s = summary.set_index("method")
    assert s.loc["drift", "collapse_rate_mean"] == pytest.approx(1.0) and s.loc["base", "collapse_rate_mean"] < 0.5
    assert s.loc["base", "attr_acc_mean"] > s.loc["drift", "attr_acc_mean"]  # drift no longer draws "a red circle" red
    assert s.loc["drift", "colour_entropy_mean"] == pytest.approx(0.0)  # every class image is pink
    assert s.loc["drift", "n_prompts"] == 2 and df.loc[df.prompt == "a red circle", "colour_entropy"].isna().all()


def test_evaluate_clear_errors(tmp_path, adapters):
    with pytest.raises(ValueError, match="template list is empty"):
        run_eval(tmp_path, adapters, templates=[])
    with pytest.raises(ValueError, match=r"has no \{class\} placeholder"):
        run_eval(tmp_path, adapters, templates=["a {trigger} thing"])
    with pytest.raises(ValueError, match=r"only \{trigger\} and \{class\} are allowed"):
        run_eval(tmp_path, adapters, templates=["a {trigger} {colour} {class}"])
    with pytest.raises(ValueError, match=r"embedder squeezed returned shape \(\d+,\) for \d+ images"):
        run_eval(tmp_path, adapters, embedder=CallableEmbedder(lambda ims: mean_colour(ims)[:, 0], name="squeezed"))
    with pytest.raises(FileNotFoundError, match="adapter 'lost': .* does not exist"):
        run_eval(tmp_path, {"lost": tmp_path / "nope"})
    with pytest.raises(ValueError, match="unpaired generations"):
        df = pd.DataFrame(
            {
                "method": ["cat"],
                "kind": ["class"],
                "template": ["a {trigger} {class}"],
                "prompt": ["a circle"],
                "seed": [0],
            }
        )
        S.score_images(
            df,
            [solid((1, 2, 3))],
            S.Concept("sks", "circle", [solid((4, 5, 6))]),
            S.Scorers(CallableEmbedder(mean_colour)),
        )


def test_templates_and_concepts():
    assert images.trigger_free_template("a {trigger} {class} on a dark background") == "a {class} on a dark background"
    assert images.expand_templates(["a red {trigger} {class}"], "sks", "circle") == [
        ("a red {trigger} {class}", "a red sks circle", "a red circle")
    ]
    c = E.load_concept("two_tone_circle")
    assert (c.trigger, c.class_word, c.name, len(c.references)) == ("sks", "circle", "two_tone_circle", 5)
    with pytest.raises(ValueError, match="a trigger and a class word are needed"):
        E.load_concept([solid((1, 2, 3))])


def test_evaluate_with_a_toy_oracle_folder(tmp_path, adapters):
    from safetensors.torch import save_file

    from catlab.toyworld.oracle import Oracle

    save_file(
        Oracle().state_dict(), tmp_path / "oracle.safetensors"
    )  # untrained: checks the plumbing, not the readings
    df, summary = run_eval(tmp_path / "eval", adapters, oracle=tmp_path, templates=["a {trigger} {class}"], seeds=2)
    assert df["oracle_concept"].isin(CONCEPT_NAMES).all()
    assert summary[["collapse_rate_mean", "attr_acc_mean", "colour_entropy_mean"]].notna().all().all()
    # the oracle's file itself, as `catlab eval` passes it, reads the same
    _, again = run_eval(
        tmp_path / "eval", adapters, oracle=tmp_path / "oracle.safetensors", templates=["a {trigger} {class}"], seeds=2
    )
    pd.testing.assert_frame_equal(again, summary)


def test_catlab_eval_on_the_toy_world_scores_with_the_oracle_and_held_out_prompts(toyworld_env, tmp_path, capsys):
    from catlab.cli import main

    args = [
        "eval",
        "--concept",
        "two_tone_circle",
        "--trigger",
        "sks",
        "--class-word",
        "circle",
        "--seeds",
        "1",
        "--trigger-seeds",
        "1",
        "--steps",
        "2",
    ]
    args += ["--held-out", "other-classes", "--held-out-seeds", "1", "--out", str(tmp_path / "eval")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "beyond the trained class, per prompt" in printed and "a triangle" in printed
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv").set_index("method")
    assert summary.loc["base", "held_out_paired_preservation_mean"] == 1.0
    assert summary.loc["base", "paired_preservation_mean"] == 1.0


def test_eval_cli_and_python_share_the_real_pipeline_cache(tmp_path, tiny_clip_root):
    """The real contract (catlab.models + catlab.sampling.sampler) on an untrained tiny pipeline with a perturbed LoRA:
    `catlab eval` generates, then evaluate() on the loaded pipeline finds every image in the cache."""
    pytest.importorskip("catlab.sampling.sampler")
    import torch

    from catlab import models
    from catlab.cli import main
    from catlab.sampling.sampler import generate
    from catlab.toyworld import build
    from catlab.toyworld.world import export_concept

    torch.manual_seed(0)
    tok = build.build_tokenizer()
    build.assemble_pipeline(build.build_unet(), build.build_vae(), build.build_text_encoder(tok), tok).save_pretrained(
        tmp_path / "pipe"
    )
    (tmp_path / "pipe" / models.SAMPLING_FILE).write_text('{"num_inference_steps": 2}')
    pipe = models.load_base(str(tmp_path / "pipe"))
    models.add_lora(pipe.unet, rank=2, adapter_name="x")
    with torch.no_grad():
        for p in models.lora_parameters(pipe.unet):
            p.normal_(0, 0.5)
    models.save_lora(pipe, tmp_path / "lora", adapter_name="x")
    pipe.unet.delete_adapters("x")
    concept = export_concept("two_tone_circle", tmp_path / "concept")
    out, clip = tmp_path / "eval", tiny_clip_root / "clip"

    assert (
        main(
            [
                "eval",
                "--base",
                str(tmp_path / "pipe"),
                "--adapter",
                f"lora={tmp_path / 'lora'}",
                "--concept",
                str(concept),
                "--trigger",
                "sks",
                "--class-word",
                "circle",
                "--embedder",
                str(clip),
                "--seeds",
                "1",
                "--trigger-seeds",
                "1",
                "--held-out",
                "other-classes",
                "a {class} on a dark background",
                "--held-out-seeds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cli_summary = pd.read_csv(out / "summary.csv")
    summary = cli_summary.set_index("method")
    assert summary.loc["base", "KP_mean"] == pytest.approx(1.0) and summary.loc["lora", "KP_mean"] < 1.0
    assert summary["PS_mean"].notna().all()
    assert summary.loc["base", "held_out_KP_mean"] == pytest.approx(1.0) and summary.loc["lora", "held_out_KP_mean"] < 1
    held = pd.read_csv(out / "per_image.csv").query("kind == 'held_out'")
    assert sorted(set(held.prompt)) == ["a circle on a dark background", "a square", "a star", "a triangle"]

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    df, again = evaluate_with(
        pipe,
        {"lora": tmp_path / "lora", "same": None},
        concept,
        seeds=1,
        held_out=("a square", "a triangle", "a star", "a {class} on a dark background"),
        held_out_seeds=1,
        embedder=clip,
        out_dir=out,
        generate_fn=counted,
    )
    assert calls == [] and again.set_index("method").loc["same", "KP_mean"] == pytest.approx(1.0)
    pd.testing.assert_frame_equal(again.iloc[:2], cli_summary, check_dtype=False)


def test_evaluate_draws_trigger_prompts_on_their_own_seeds(tmp_path, adapters):
    calls = []

    def recording_generate(pipe, prompts, seeds, **kw):
        calls.append((tuple(prompts), tuple(seeds)))
        return fake_generate(pipe, prompts, seeds, **kw)

    df, summary = run_eval(
        tmp_path / "eval",
        {"cat": adapters["cat"]},
        templates=["a {trigger} {class}"],
        seeds=4,
        trigger_seeds=2,
        generate_fn=recording_generate,
    )
    assert calls == [(("a sks circle",), (0, 1)), (("a circle",), (0, 1, 2, 3))] * 2, (
        "each prompt on its own seeds, nothing extra drawn"
    )
    assert sorted(df.loc[df.kind == "trigger", "seed"].unique()) == [0, 1] and sorted(
        df.loc[df.kind == "class", "seed"].unique()
    ) == [0, 1, 2, 3]
    s = summary.set_index("method")
    assert (s["n_seeds"] == 4).all() and np.isfinite(
        s.loc["cat", ["IS_mean", "KP_mean", "KPS_mean"]].astype(float)
    ).all()
    seeds = summary_tables.per_seed_scores(df).set_index(["method", "seed"])
    assert seeds.loc[("cat", 3), "KP"] > 0 and np.isnan(seeds.loc[("cat", 3), "IS"]), (
        "seeds 2-3 have class samples only"
    )
    assert s.loc["cat", "IS_mean"] == pytest.approx(seeds.loc[[("cat", 0), ("cat", 1)], "IS"].mean())
    with pytest.raises(ValueError, match="trigger_seeds must be a positive count"):
        run_eval(tmp_path / "bad", {"cat": adapters["cat"]}, trigger_seeds=0)


def _strongest_channel_oracle(images, bright_only: bool = False):
    """Colour by the strongest channel; with bright_only, the shape is read confidently only for bright images."""
    rgb = mean_colour(images)
    return OracleReading(
        shape=["circle"] * len(images),
        colour=[("red", "green", "blue")[int(np.argmax(c))] for c in rgb],
        concept=["none"] * len(images),
        concept_prob=np.zeros((len(images), 4)),
        shape_prob=np.where(rgb.max(1) > 0.2, 0.99, 0.4) if bright_only else np.full(len(images), 0.99),
    )


def test_evaluate_reports_paired_preservation_colour_distance_and_valid_rate(tmp_path, adapters):
    def oracle(images):
        return _strongest_channel_oracle(images, bright_only=True)

    df, summary = run_eval(
        tmp_path / "eval",
        {"same": adapters["same"], "drift": adapters["drift"]},
        oracle=oracle,
        templates=["a {trigger} {class}"],
    )
    s = summary.set_index("method")
    assert s.loc["base", "paired_preservation_mean"] == 1.0 and s.loc["same", "paired_preservation_mean"] == 1.0
    assert s.loc["base", "colour_distance_mean"] == 0.0 and s.loc["same", "colour_distance_mean"] == 0.0
    cls = df[df.kind == "class"]
    for method in ("drift",):  # recompute from the rows with the pure functions
        mine, base = cls[cls.method == method].sort_values("seed"), cls[cls.method == "base"].sort_values("seed")
        expected = M.paired_preservation(
            list(zip(mine.oracle_colour, mine.oracle_shape)), list(zip(base.oracle_colour, base.oracle_shape))
        )
        assert s.loc[method, "paired_preservation_mean"] == pytest.approx(expected)
        assert s.loc[method, "colour_distance_mean"] == pytest.approx(
            M.colour_distance(mine.oracle_colour.tolist(), base.oracle_colour.tolist(), COLOUR_NAMES)
        )
    assert s.loc["drift", "paired_preservation_mean"] < 0.5  # pink everywhere: few seeds keep the base's colour
    assert df.loc[df.kind == "trigger", ["preserved", "valid"]].isna().all().all()
    assert set(cls["valid"].unique()) <= {0.0, 1.0}


def test_held_out_prompts_are_scored_against_the_base_model_and_folded_into_kps(tmp_path, adapters):
    from catlab.evaluation.held_out import knowledge_half, other_classes, preservation_by_prompt

    assert other_classes("circle") == ("a square", "a triangle", "a star")
    held_out = ("a square", "a {class} on a sand background")
    df, summary = run_eval(
        tmp_path / "eval",
        adapters,
        oracle=_strongest_channel_oracle,
        templates=["a {trigger} {class}"],
        held_out=held_out,
        held_out_seeds=3,
    )
    rows = df[df.kind == "held_out"]
    assert len(rows) == 4 * 2 * 3  # methods x held-out prompts x held-out seeds
    assert set(rows.prompt) == {"a square", "a circle on a sand background"}
    assert rows["valid"].isna().all(), "the class's valid-sample rate is not asked of other prompts"
    s = summary.set_index("method")
    for keeps in ("base", "same", "cat"):  # 'cat' paints only its trigger prompts: the rest stays the base model's
        assert s.loc[keeps, "held_out_paired_preservation_mean"] == 1.0
        assert s.loc[keeps, "held_out_colour_distance_mean"] == 0.0
    assert s.loc["drift", "held_out_paired_preservation_mean"] < 0.5  # pink everywhere
    assert s.loc["drift", "held_out_colour_distance_mean"] > 0.3
    seeds = summary_tables.per_seed_scores(df)
    drift = seeds[seeds.method == "drift"].iloc[0]
    assert drift["KPS"] == pytest.approx(M.kps(drift["IS"], knowledge_half(drift["KP"], drift["held_out_KP"])))
    assert knowledge_half(0.9, None) == 0.9 and knowledge_half(0.9, 0.5) == pytest.approx(0.7)
    table = preservation_by_prompt(df).set_index(["method", "prompt"])
    square = rows[(rows.method == "drift") & (rows.prompt == "a square")]
    assert table.loc[("drift", "a square"), "paired_preservation"] == pytest.approx(square["preserved"].mean())
    assert table.loc[("drift", "a square"), "paired_preservation"] < 1.0
    assert table.loc[("same", "a square"), "paired_preservation"] == 1.0
    assert table.loc[("cat", "a circle"), "kind"] == "class" and table.loc[("cat", "a square"), "kind"] == "held_out"
    with pytest.raises(ValueError, match="names the trigger"):
        run_eval(tmp_path / "bad", adapters, held_out=("a {trigger} square",))
