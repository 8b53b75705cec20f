"""DreamBooth's DINO, CLIP-I and CLIP-T beside CAT's scores, offline: tiny random-weight ViT / DINOv2 / CLIP folders
saved to tmp_path, checked against hand computations on the models' own outputs."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fakes import FakePipe, evaluate_with, fake_activate
from PIL import Image

from catlab.evaluation import metrics as M
from catlab.evaluation import protocol as E
from catlab.evaluation import scoring as S
from catlab.evaluation import summary as summary_tables
from catlab.evaluation.embedders import ClipEmbedder, DinoEmbedder, load_embedder, vit_name

# ----------------------------------------------------------------------------- tiny model folders


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A random ViTModel without pooler and its image processor: the layout of facebook/dino-vits16, at 32 px.
    initializer_range 0.2 spreads the CLS embeddings enough that a black and a white image have a negative cosine."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit") / "dino-vit"
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_range=0.2,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model, ViTImageProcessor

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("dinov2") / "dinov2"
    Dinov2Model(
        Dinov2Config(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    ).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """An untrained CLIPModel with the toy tokenizer and a 32 px image processor."""
    from catlab.toyworld import build

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "clip"
    tok = build.build_tokenizer()
    build.build_clip(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    build.build_clip_image_processor().save_pretrained(folder)
    return folder


def solid(rgb, size=32):
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


def noise(seed, size=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@torch.no_grad()
def cls_by_hand(folder, images):
    """The CLS token after the final layer norm, straight from transformers: what DINO's ViT returns."""
    from transformers import AutoImageProcessor, AutoModel

    model, processor = AutoModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    return (
        model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        .last_hidden_state[:, 0]
        .numpy()
    )


IMAGES = [solid((0, 0, 0)), solid((255, 255, 255)), solid((230, 40, 40)), solid((40, 40, 230)), noise(0), noise(1)]

# ----------------------------------------------------------------------------- raw cosines by hand


def test_image_similarity_is_the_raw_cosine():
    assert M.image_similarity([[1, 0]], [[-1, 0]]) == pytest.approx(-1.0)  # raw: not rescaled to 0
    np.testing.assert_allclose(M.image_similarity([[1, 0], [0, 1]], [[2, 0]], per_image=True), [1.0, 0.0])
    assert M.image_similarity([[1, 0]], [[1, 0], [-1, 0], [0, 3]]) == pytest.approx(0.0)  # mean over references
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    np.testing.assert_allclose(
        M.identity_similarity(g, r, per_image=True), (M.image_similarity(g, r, per_image=True) + 1) / 2
    )
    assert -1 <= M.image_similarity(g, r) <= 1


def test_vit_names():
    assert vit_name(384, 16) == "ViT-S/16" and vit_name(768, 32) == "ViT-B/32" and vit_name(1024, 14) == "ViT-L/14"
    assert vit_name(32, 8) == "ViT (width 32, patch 8)"


# ----------------------------------------------------------------------------- embedders


def test_dino_embedder_is_the_cls_token_and_its_scores_are_raw(vit_folder):
    emb = DinoEmbedder(vit_folder, device="cpu", batch_size=4)
    x = emb.embed_images(IMAGES)
    assert x.shape == (len(IMAGES), 32) and np.allclose(np.linalg.norm(x, axis=1), 1)
    np.testing.assert_allclose(x, unit(cls_by_hand(vit_folder, IMAGES)), atol=1e-5)
    assert M.image_similarity(x[:1], x[:1]) == pytest.approx(1.0)  # an image with itself
    cos = x @ x.T
    assert (cos[~np.eye(len(x), dtype=bool)] < 1 - 1e-4).all()  # two different images: below 1
    i, j = np.unravel_index(np.argmin(cos), cos.shape)
    assert cos[i, j] < 0  # black vs white on this random ViT
    assert M.image_similarity(x[[i]], x[[j]]) == pytest.approx(cos[i, j])  # the raw cosine, negative...
    assert M.identity_similarity(x[[i]], x[[j]]) == pytest.approx((cos[i, j] + 1) / 2)  # ...where IS would rescale it
    assert emb.backbone == f"DINO ViT (width 32, patch 8) ({vit_folder})" and not emb.has_text
    with pytest.raises(NotImplementedError, match="embeds images only"):
        emb.embed_texts(["a sks circle"])


def test_dinov2_folders_load_too(dinov2_folder):
    emb = load_embedder(dinov2_folder, device="cpu")
    assert isinstance(emb, DinoEmbedder) and emb.backbone.startswith("DINOv2 ViT (width 32, patch 8)")
    np.testing.assert_allclose(emb.embed_images(IMAGES[:3]), unit(cls_by_hand(dinov2_folder, IMAGES[:3])), atol=1e-5)


def test_load_embedder_picks_dino_or_clip_from_the_folder(vit_folder, clip_folder):
    load_embedder.cache_clear()
    dino = load_embedder(vit_folder, device="cpu")
    assert (
        isinstance(dino, DinoEmbedder) and load_embedder(str(vit_folder), device="cpu", kind="dino") is dino
    )  # cached
    assert isinstance(load_embedder(clip_folder, device="cpu"), ClipEmbedder)
    assert isinstance(load_embedder(clip_folder, device="cpu", kind="clip"), ClipEmbedder)
    with pytest.raises(ValueError, match="kind must be one of auto, clip, dino"):
        load_embedder(clip_folder, kind="vit")


def test_clip_i_and_clip_t_are_raw_cosines(clip_folder):
    emb = ClipEmbedder(clip_folder, device="cpu")
    x, t = emb.embed_images(IMAGES), emb.embed_texts(["a red circle", "a sks circle"])
    assert M.image_similarity(x[:1], x[:1]) == pytest.approx(1.0)
    assert M.image_similarity(x[2:3], x[3:4]) < 1 - 1e-4
    assert M.image_similarity(x[2:3], x[3:4]) == pytest.approx(float(x[2] @ x[3]))
    np.testing.assert_allclose(M.prompt_similarity(t[:1], x, per_image=True), x @ t[0])  # CLIP-T: raw
    assert emb.backbone == f"CLIP ViT (width 64, patch 4) ({clip_folder})" and emb.has_text


def test_clear_errors_for_folders_without_a_usable_model(tmp_path, vit_folder, clip_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="holds no usable DINO model: its config could not be read"):
        DinoEmbedder(tmp_path / "empty", device="cpu")
    with pytest.raises(ValueError, match="holds a 'clip' model, not a ViT.*a CLIP folder goes to embedder= or clip="):
        load_embedder(clip_folder, kind="dino")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((vit_folder / "config.json").read_text())
    with pytest.raises(OSError, match="holds no usable DINO model: the vit weights could not be loaded"):
        DinoEmbedder(no_weights, device="cpu")
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_processor / f).write_bytes((vit_folder / f).read_bytes())
    with pytest.raises(OSError, match="has no image processor"):
        DinoEmbedder(no_processor, device="cpu")
    with pytest.raises(FileNotFoundError, match="DINO folder ./no/such/dino does not exist"):
        DinoEmbedder("./no/such/dino")
    with pytest.raises(ValueError, match="the toy world has a CLIP, not a DINO model"):
        load_embedder("toyworld", kind="dino")
    with pytest.raises(ValueError, match="holds a 'vit' model, not a CLIP.*goes to dino="):
        ClipEmbedder(vit_folder, device="cpu")


# ----------------------------------------------------------------------------- evaluate


def fake_generate(pipe, prompts, seeds, **kwargs):
    """The 'cat' adapter draws trigger prompts black (the references are white: a negative DINO cosine); everything
    else is noise, deterministic per (prompt, seed)."""
    fake_generate.calls += 1
    return [
        [
            solid((5, 5, 5))
            if pipe.active == "cat" and "sks" in p
            else noise(int(hashlib.sha1(f"{p}|{s}".encode()).hexdigest()[:8], 16))
            for s in seeds
        ]
        for p in prompts
    ]


fake_generate.calls = 0
REFS = [solid((255, 255, 255)), solid((250, 250, 245))]


def run_eval(out_dir, tmp_path, **kw):
    (tmp_path / "cat").mkdir(exist_ok=True)
    (tmp_path / "cat" / "pytorch_lora_weights.safetensors").write_bytes(b"cat")
    kw = {
        "templates": ["a {trigger} {class}", "a {trigger} {class} on a dark background"],
        "seeds": 2,
        "generate_fn": fake_generate,
        "activate_fn": fake_activate,
        "progress": False,
        "device": "cpu",
        **kw,
    }
    return evaluate_with(FakePipe(), {"cat": tmp_path / "cat"}, REFS, out_dir=out_dir, **kw)


def test_evaluate_adds_dino_clip_i_clip_t_named_with_backbone_and_scaling(tmp_path, vit_folder, clip_folder):
    df, summary = run_eval(tmp_path / "eval", tmp_path, embedder=clip_folder, dino=vit_folder, clip=True)
    trig, cls = df.kind == "trigger", df.kind == "class"
    assert {"DINO_cos", "DINO-PRES_cos", "CLIP-I_cos", "CLIP-T_cos", "IS", "PS", "KP"} <= set(df.columns)
    assert (
        df.loc[trig, ["DINO_cos", "CLIP-I_cos"]].notna().all().all()
        and df.loc[cls, ["DINO_cos", "CLIP-I_cos"]].isna().all().all()
    )
    assert df.loc[cls, "DINO-PRES_cos"].notna().all() and df.loc[trig, "DINO-PRES_cos"].isna().all()
    assert df["CLIP-T_cos"].notna().all()

    # one row by hand: DINO = mean raw cosine of CLS tokens to the references; CLIP-I likewise; CLIP-T with the prompt as written
    row = df[(df.method == "cat") & trig].iloc[0]
    image = E._open_rgb(tmp_path / "eval" / row.image)
    d = unit(cls_by_hand(vit_folder, [image, *REFS]))
    assert row["DINO_cos"] == pytest.approx(float((d[1:] @ d[0]).mean()), abs=1e-5)
    assert row["DINO_cos"] < 0  # black against white references: raw, so below 0
    clip = ClipEmbedder(clip_folder, device="cpu")
    c, r, t = clip.embed_images([image]), clip.embed_images(REFS), clip.embed_texts([row.prompt])
    assert row["CLIP-I_cos"] == pytest.approx(float((r @ c[0]).mean()), abs=1e-6)
    assert row["CLIP-T_cos"] == pytest.approx(float(t[0] @ c[0]), abs=1e-6) and row.prompt == "a sks circle"
    # with clip=True and a CLIP evaluation embedder, IS is CLIP-I rescaled and PS is CLIP-T
    np.testing.assert_allclose(df.loc[trig, "IS"], (df.loc[trig, "CLIP-I_cos"] + 1) / 2)
    np.testing.assert_allclose(df["PS"], df["CLIP-T_cos"])

    s = summary.set_index("method")
    for score in ("DINO_cos", "CLIP-I_cos", "CLIP-T_cos", "DINO-PRES_cos"):
        assert f"{score}_mean" in s and f"{score}_ci95" in s
    cat_seeds = df[(df.method == "cat") & trig].groupby("seed")["DINO_cos"].mean()
    assert s.loc["cat", "DINO_cos_mean"] == pytest.approx(cat_seeds.mean())
    assert s.loc["cat", "DINO_cos_mean"] < 0 < s.loc["cat", "IS_mean"]
    backbones = summary.attrs["backbones"]
    assert backbones["DINO_cos"] == f"raw cosine of DINO ViT (width 32, patch 8) ({vit_folder})"
    assert (
        backbones["CLIP-I_cos"]
        == backbones["CLIP-T_cos"]
        == f"raw cosine of CLIP ViT (width 64, patch 4) ({clip_folder})"
    )
    assert backbones["IS"] == backbones["KPS"] == f"(cos + 1) / 2 of CLIP ViT (width 64, patch 4) ({clip_folder})"
    note = s.loc["cat", "backbones"]
    assert (
        note == s.loc["base", "backbones"]
        and f"DINO_cos, DINO-PRES_cos: raw cosine of DINO ViT (width 32, patch 8) ({vit_folder})" in note
    )
    assert "IS, PRES, KP, KPS: (cos + 1) / 2 of CLIP" in note and "PS, " in note
    assert json.loads((tmp_path / "eval" / "backbones.json").read_text()) == df.attrs["backbones"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "eval" / "summary.csv"), summary, check_dtype=False)
    html = summary_tables.style_summary(summary).to_html()
    assert "DINO_cos ↑" in html and "DINO-PRES_cos ↓" in html and "raw cosine of DINO ViT" in html


@pytest.mark.filterwarnings("ignore:prompt similarity")  # the image-only stand-in embedder has no PS
def test_evaluate_with_a_separate_clip_and_off_by_default(tmp_path, vit_folder, clip_folder):
    from catlab.evaluation.embedders import CallableEmbedder

    mean_colour = CallableEmbedder(
        lambda ims: np.array([np.asarray(im, dtype=np.float64).mean((0, 1)) / 255 - 0.5 for im in ims]),
        name="mean_colour",
    )
    df, summary = run_eval(tmp_path / "off", tmp_path, embedder=mean_colour)
    assert not set(S.REAL_SCORES) & set(df.columns) and "backbones" not in summary  # nothing new unless asked
    assert summary.attrs["backbones"]["IS"] == "(cos + 1) / 2 of mean_colour"
    assert json.loads((tmp_path / "off" / "backbones.json").read_text())["KP"] == "(cos + 1) / 2 of mean_colour"

    df, summary = run_eval(tmp_path / "sep", tmp_path, embedder=mean_colour, clip=clip_folder)
    clip = ClipEmbedder(clip_folder, device="cpu")
    row = df[df.kind == "class"].iloc[0]
    image = E._open_rgb(tmp_path / "sep" / row.image)
    assert row["CLIP-T_cos"] == pytest.approx(
        float(clip.embed_texts([row.prompt])[0] @ clip.embed_images([image])[0]), abs=1e-6
    )
    assert math.isnan(row["CLIP-I_cos"]) and "DINO_cos" not in df
    assert summary.attrs["backbones"]["CLIP-I_cos"].startswith("raw cosine of CLIP") and summary.attrs["backbones"][
        "IS"
    ].endswith("mean_colour")

    fake_generate.calls = 0
    with pytest.raises(ValueError, match="CLIP-T needs a CLIP with a text tower; mean_colour embeds images only"):
        run_eval(tmp_path / "bad", tmp_path, embedder=mean_colour, clip=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="holds no usable DINO model"):
        run_eval(tmp_path / "bad", tmp_path, embedder=mean_colour, dino=tmp_path / "empty")
    assert fake_generate.calls == 0  # a wrong folder fails before anything is generated


def test_eval_cli_passes_dino_and_clip_through(tmp_path, monkeypatch, capsys):
    """`catlab eval --dino PATH --clip [PATH]` reach evaluate(); without the flags nothing new is passed."""
    import argparse

    from catlab.cli import evaluate as eval_command

    seen = []
    summary = pd.DataFrame(
        {"method": ["base"], "n_seeds": [1], "n_prompts": [1], "IS_mean": [0.9], "IS_ci95": [np.nan]}
    )
    summary.attrs["backbones"] = {"IS": "(cos + 1) / 2 of CLIP ViT-B/32 (openai/clip-vit-base-patch32)"}

    def fake_evaluate(base, adapters, concept, **kwargs):
        seen.append(kwargs)
        return E.EvalResult(pd.DataFrame(), summary)

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    monkeypatch.setattr(E, "load_concept", lambda *a: a)
    common = {
        "adapter": [],
        "base": "runs/sd15",
        "concept": [str(tmp_path)],  # --concept, --trigger and --class-word repeat, one per concept
        "trigger": ["sks"],
        "class_word": ["dog"],
        "seeds": 1,
        "embedder": "openai/clip-vit-base-patch32",
        "out": str(tmp_path / "eval"),
        "unconditional": "adapted",
    }
    assert eval_command.run_eval(argparse.Namespace(**common)) == 0
    scorers, sampling = seen[-1]["scorers"], seen[-1]["sampling"]
    assert scorers.dino is None and scorers.clip is None and sampling.unconditional == "adapted"
    assert eval_command.run_eval(argparse.Namespace(**{**common, "unconditional": "base"})) == 0
    assert seen[-1]["sampling"].unconditional == "base"
    assert eval_command.run_eval(argparse.Namespace(**common, trigger_seeds=3)) == 0
    assert seen[-1]["sampling"].trigger_seeds == 3 and seen[-1]["sampling"].seeds == 1
    assert eval_command.run_eval(argparse.Namespace(**common, dino="facebook/dino-vits16", clip=True)) == 0
    assert seen[-1]["scorers"].dino == "facebook/dino-vits16" and seen[-1]["scorers"].clip is True
    assert "backbones: IS: (cos + 1) / 2 of CLIP ViT-B/32 (openai/clip-vit-base-patch32)" in capsys.readouterr().out


def test_eval_cli_parses_the_dreambooth_metric_flags():
    from catlab.cli import build_parser

    base = ["eval", "--concept", "c", "--trigger", "sks", "--class-word", "circle"]
    args = build_parser().parse_args(base + ["--dino", "models/dino", "--clip"])
    assert args.dino == "models/dino" and args.clip is True
    args = build_parser().parse_args(base + ["--clip", "models/clip"])
    assert args.dino is None and args.clip == "models/clip"
    assert build_parser().parse_args(base).clip is None
    assert build_parser().parse_args(base).unconditional == "adapted"
    assert build_parser().parse_args(base + ["--unconditional", "base"]).unconditional == "base"
