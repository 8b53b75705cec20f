"""Scoring: per-image scores of generated images against a concept and the base model, and their summaries.

`score_images` embeds the images and applies the pure functions of `catlab.evaluation.metrics` (plus, with an oracle, the
toy world's shape/colour/concept readings) row by row; `per_seed_scores` and `summarise` reduce the table to
mean and 95% CI per method, and `style_summary` shows that in a notebook. `catlab.evaluation.protocol` generates the images.

Optionally (`Scorers.dino`, `Scorers.clip`) the tables gain the metrics real-world papers report, as raw cosines named so the
scaling is visible: DINO_cos and CLIP-I_cos (DreamBooth's DINO and CLIP-I), CLIP-T_cos, and DINO-PRES_cos
(DreamBooth's PRES). IS, PS, KP, KPS and PRES keep CAT's conventions ((cos + 1) / 2, PS raw). Which model
produced each column is kept in `df.attrs["backbones"]` (and, with the real-world metrics on, in the summary's
`backbones` column).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from catlab.evaluation.embedders import load_embedder
from catlab.evaluation.fidelity import FIDELITY_COLUMNS, LEAK_SCORE, score_fidelity
from catlab.evaluation.held_out import (
    HELD_OUT_SCORES,
)
from catlab.evaluation.metrics import (
    collapse_rate,
    colour_distance,
    colour_entropy,
    identity_similarity,
    image_similarity,
    knowledge_preservation,
    paired_preservation,
    pairwise_diversity,
    prompt_similarity,
    valid_rate,
    vendi_score,
)
from catlab.toyworld.world import COLOUR_NAMES, CONCEPTS, SHAPES

BASE = "base"  # method name of the base model, always evaluated: KP needs it
HIGHER_IS_BETTER = {
    "IS": True,
    "PS": True,
    "KP": True,
    "KPS": True,
    "DINO_cos": True,
    "CLIP-I_cos": True,
    "CLIP-T_cos": True,
    "DIV": True,
    "Vendi": True,
    "PRES": False,
    "DINO-PRES_cos": False,
    "colour_entropy": True,
    "collapse_rate": False,
    "attr_acc": True,
    "identity_acc": True,
    "paired_preservation": True,
    "colour_distance": False,
    "valid_rate": True,
    "fidelity": True,
    "colour_fidelity": True,
    "setting_fidelity": True,
    "size_fidelity": True,
    "position_fidelity": True,
    "shape_fidelity": True,
    "trigger_valid_rate": True,
    "trigger_colour_distance": False,
    "fidelity_leak": False,
    **HELD_OUT_SCORES,
}
FIDELITY_SCORES = (
    *FIDELITY_COLUMNS.values(),
    LEAK_SCORE,
)  # trigger samples held to the concept's photos, and class samples that pass as it (fidelity.py)
REAL_SCORES = (
    "DINO_cos",
    "CLIP-I_cos",
    "CLIP-T_cos",
    "DINO-PRES_cos",
)  # DreamBooth's metrics, raw cosines (dino=, clip=)
SEED_SCORES = (
    "IS",
    "PS",
    "KP",
    "KPS",
    "PRES",
    *REAL_SCORES,
    "collapse_rate",
    "attr_acc",
    "identity_acc",
    "paired_preservation",
    "valid_rate",
    *FIDELITY_SCORES,
    "held_out_KP",
    "held_out_paired_preservation",
)  # CI across seeds
SET_SCORES = (
    "DIV",
    "Vendi",
    "colour_entropy",
    "colour_distance",
)  # one value per (method, class prompt): CI across prompts
VALID_CONFIDENCE = 0.9  # a class sample is valid when the oracle reads the class's shape with at least this probability
# how each embedding score is scaled: CAT's code rescales image-image cosines to [0, 1], DreamBooth's metrics are raw
SCALING = {
    "IS": "(cos + 1) / 2",
    "PRES": "(cos + 1) / 2",
    "KP": "(cos + 1) / 2",
    "KPS": "(cos + 1) / 2",
    "PS": "raw cosine",
    "DIV": "1 - cos",
    "Vendi": "cosine kernel",
    **{score: "raw cosine" for score in REAL_SCORES},
}
ORACLE_SCORES = (
    "attr_acc",
    "colour_entropy",
    "collapse_rate",
    "identity_acc",
    "paired_preservation",
    "colour_distance",
    "valid_rate",
    *FIDELITY_SCORES,
    "held_out_paired_preservation",
    "held_out_colour_distance",
)


@dataclass
class Concept:
    """What generated images are scored against: trigger, class word and reference images (see `evaluation.load_concept`)."""

    trigger: str
    class_word: str
    references: list[Image.Image]
    name: str | None = None  # toy concept name: lets the oracle score collapse and identity


def _named_shape(prompt: str) -> str | None:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return next((s for s in SHAPES if s in words), None)


def _named_colour(prompt: str) -> str | None:
    return next((c for c in COLOUR_NAMES if re.search(rf"\b{c}\b", prompt)), None)


def _read_oracle(oracle: Any, images: list[Image.Image]):
    import torch

    from catlab.toyworld.oracle import read_images

    if isinstance(oracle, (str, Path)):
        from catlab.toyworld.assets import load_oracle

        oracle = load_oracle(None if str(oracle) == "toyworld" else oracle)
    if isinstance(oracle, torch.nn.Module):
        return read_images(oracle, images)
    if callable(oracle):
        return oracle(images)
    raise TypeError(
        f"oracle: expected 'toyworld', an asset folder, an Oracle or a function images -> OracleReading; got {type(oracle).__name__}"
    )


def backbone_note(backbones: Mapping[str, str]) -> str:
    """One line naming the model and the scaling behind each score, columns with the same source grouped:
    'IS, KP, KPS, PRES: (cos + 1) / 2 of CLIP ViT-B/32 (openai/clip-vit-base-patch32); DINO_cos, ...'."""
    groups: dict[str, list[str]] = {}
    for score, source in backbones.items():
        groups.setdefault(source, []).append(score)
    return "; ".join(f"{', '.join(scores)}: {source}" for source, scores in groups.items())


@dataclass
class Scorers:
    """What reads the generated images (docs/metrics.md): the evaluation embedder, the toy world's oracle, and the
    backbones real-world papers report, as raw cosines."""

    embedder: Any = "toyworld"  # IS, PS, KP, PRES, DIV, Vendi: 'toyworld', a CLIP folder / hub id, or an Embedder
    oracle: Any = None  # the toy world's ground truth (catlab.toyworld.assets.load_oracle()) for toy concepts
    dino: Any = None  # DreamBooth's DINO and DINO-PRES: a ViT / DINOv2 folder or hub id (facebook/dino-vits16)
    clip: Any = None  # CLIP-I and CLIP-T: True = the embedder itself (a CLIP), or a CLIP folder / hub id / Embedder

    def loaded(self, device: str | None = None) -> Scorers:
        """The same scorers with every model loaded (once per process): a wrong folder fails before any sampling."""
        embedder = load_embedder(self.embedder, device=device)
        dino = None if self.dino is None else load_embedder(self.dino, device=device, kind="dino")
        clip = (
            None
            if self.clip is None or self.clip is False
            else embedder
            if self.clip is True
            else load_embedder(self.clip, device=device, kind="clip")
        )
        if clip is not None and not clip.has_text:
            raise ValueError(
                f"CLIP-T needs a CLIP with a text tower; {clip.backbone} embeds images only. Pass clip= a CLIP "
                "folder or hub id (openai/clip-vit-base-patch32), or clip=True with a CLIP as the evaluation embedder"
            )
        return Scorers(embedder, self.oracle, dino, clip)


def score_images(
    df: pd.DataFrame, images: list[Image.Image], concept: Concept, scorers: Scorers | None = None
) -> pd.DataFrame:
    """Per-image scores for rows (method, kind, prompt, seed) with `images` aligned to the rows.

    Trigger rows get IS, class rows get KP (against the base row of the same prompt and seed) and PRES, all rows PS.
    Set scores (DIV, Vendi, colour entropy) belong to a (method, class prompt) group and are repeated on its rows.
    With `scorers.dino`: DINO_cos (trigger rows) and DINO-PRES_cos (class rows), the raw mean cosine to the
    references; with `scorers.clip`: CLIP-I_cos (trigger rows) and CLIP-T_cos (all rows: the prompt as written
    against the image). `df.attrs["backbones"]` names the model and the scaling behind each score column.
    """
    df = df.reset_index(drop=True).copy()
    if len(images) != len(df):
        raise ValueError(f"score_images: {len(images)} images for {len(df)} rows; pass one image per row")
    scorers = (scorers or Scorers()).loaded()
    emb, backbones = _embedding_scores(df, images, concept, scorers.embedder)
    groups = df.iloc[np.flatnonzero(df["kind"] != "trigger")].groupby(["method", "prompt"], sort=False).groups
    df["DIV"], df["Vendi"] = np.nan, np.nan
    for idx in groups.values():
        df.loc[idx, "DIV"], df.loc[idx, "Vendi"] = pairwise_diversity(emb[idx]), vendi_score(emb[idx])
    backbones |= {score: f"{SCALING[score]} of {scorers.embedder.backbone}" for score in ("DIV", "Vendi")}
    if scorers.dino is not None:
        backbones |= _dino_scores(df, images, concept, scorers.dino)
    if scorers.clip is not None:
        backbones |= _clip_scores(df, images, concept, scorers.clip, emb if scorers.clip is scorers.embedder else None)
    if scorers.oracle is not None:
        df = _score_oracle(df, _read_oracle(scorers.oracle, images), concept, groups)
        shape = concept.class_word if concept.class_word in SHAPES else None
        df = score_fidelity(df, images, concept.references, shape)
        backbones |= {score: "toy-world oracle readings" for score in ORACLE_SCORES}
        backbones |= {score: "pixels against the concept's photos (shape: the oracle)" for score in FIDELITY_SCORES}
    df.attrs["backbones"] = backbones
    return df


def _embedding_scores(
    df: pd.DataFrame, images: list[Image.Image], concept: Concept, embedder
) -> tuple[np.ndarray, dict]:
    """IS, PRES, KP and PS in place; returns the image embeddings (N, D) and the backbone of each score."""
    backbones = {score: f"{SCALING[score]} of {embedder.backbone}" for score in ("IS", "PRES", "KP", "KPS")}
    emb = embedder.embed_images(images)  # (N, D)
    ref = embedder.embed_images(concept.references)  # (R, D)
    trig = (df["kind"] == "trigger").to_numpy()
    cls = np.flatnonzero(~trig)
    sim = identity_similarity(emb, ref, per_image=True)  # (N,)
    df["IS"], df["PRES"] = np.where(trig, sim, np.nan), np.where(~trig, sim, np.nan)
    base_rows = {
        (p, s): i
        for i, (m, k, p, s) in enumerate(zip(df.method, df.kind, df.prompt, df.seed))
        if m == BASE and k != "trigger"
    }
    pairs = [base_rows.get((df.prompt[i], df.seed[i])) for i in cls]
    if any(j is None for j in pairs):
        raise ValueError(
            f"unpaired generations: the base model has no image for some (class or held-out prompt, seed) of the "
            "adapters; "
            f"KP needs method {BASE!r} generated on the same prompts and seeds"
        )
    df["KP"] = np.nan
    if len(cls):
        df.loc[cls, "KP"] = knowledge_preservation(emb[cls], emb[pairs], per_image=True)
    prompts = list(dict.fromkeys(df["prompt"]))
    try:
        text = dict(zip(prompts, embedder.embed_texts(prompts)))
        df["PS"] = prompt_similarity(np.stack([text[p] for p in df["prompt"]]), emb, per_image=True)
        backbones["PS"] = f"{SCALING['PS']} of {embedder.backbone}"
    except NotImplementedError as e:
        warnings.warn(f"prompt similarity (PS) left empty: {e}", stacklevel=3)
        df["PS"] = np.nan
    return emb, backbones


def _dino_scores(df: pd.DataFrame, images: list[Image.Image], concept: Concept, dino) -> dict:
    """DreamBooth's DINO (trigger rows) and its PRES (class rows): raw cosines of a self-supervised ViT's CLS embeddings."""
    trig = (df["kind"] == "trigger").to_numpy()
    sim = image_similarity(dino.embed_images(images), dino.embed_images(concept.references), per_image=True)  # (N,)
    df["DINO_cos"], df["DINO-PRES_cos"] = np.where(trig, sim, np.nan), np.where(~trig, sim, np.nan)
    return {score: f"{SCALING[score]} of {dino.backbone}" for score in ("DINO_cos", "DINO-PRES_cos")}


def _clip_scores(
    df: pd.DataFrame, images: list[Image.Image], concept: Concept, clip, embedded: np.ndarray | None
) -> dict:
    """DreamBooth's CLIP-I (trigger rows) and CLIP-T (all rows), raw cosines; `embedded` reuses the images' embeddings."""
    trig = (df["kind"] == "trigger").to_numpy()
    img = embedded if embedded is not None else clip.embed_images(images)  # (N, D)
    df["CLIP-I_cos"] = np.where(
        trig, image_similarity(img, clip.embed_images(concept.references), per_image=True), np.nan
    )
    prompts = list(dict.fromkeys(df["prompt"]))
    text = dict(zip(prompts, clip.embed_texts(prompts)))  # the prompt as written, trigger included
    df["CLIP-T_cos"] = prompt_similarity(np.stack([text[p] for p in df["prompt"]]), img, per_image=True)
    return {score: f"{SCALING[score]} of {clip.backbone}" for score in ("CLIP-I_cos", "CLIP-T_cos")}


def _score_oracle(df: pd.DataFrame, reading, concept: Concept, groups: Mapping) -> pd.DataFrame:
    df["oracle_shape"], df["oracle_colour"], df["oracle_concept"] = reading.shape, reading.colour, reading.concept
    trig = (df["kind"] == "trigger").to_numpy()
    shape = concept.class_word if concept.class_word in SHAPES else None
    trained = (df["kind"] == "class").to_numpy()  # the concept's class; held-out rows name their own shape, or none
    ok = []
    for i, prompt in enumerate(df["prompt"]):
        want_shape = shape if trained[i] or trig[i] else _named_shape(prompt)
        expected = [(df.oracle_shape[i], want_shape), (df.oracle_colour[i], None if trig[i] else _named_colour(prompt))]
        checks = [read == want for read, want in expected if want is not None]
        ok.append(np.nan if trig[i] or not checks else float(all(checks)))
    df["attr_ok"] = ok
    known = concept.name if concept.name in CONCEPTS else None  # HELD_OUT_CONCEPTS have no head in the oracle
    if known is None:
        warnings.warn(
            f"the oracle knows no toy concept with trigger {concept.trigger!r} and class {concept.class_word!r}"
            f"{f' (it was not trained on {concept.name!r})' if concept.name else ''}: collapse rate and identity "
            "accuracy left empty; fidelity and fidelity_leak judge it from the pixels",
            stacklevel=3,
        )
    # each image's score is the metric on that image alone (a rate over one sample): the per-seed means are the rates
    is_concept = (
        np.array([collapse_rate([c], known) for c in df["oracle_concept"]]) if known else np.full(len(df), np.nan)
    )
    df["collapsed"], df["identity_ok"] = np.where(trig, np.nan, is_concept), np.where(trig, is_concept, np.nan)
    # ground-truth preservation: each class sample against the base model's sample from the same prompt and seed
    read = list(zip(df.oracle_colour, df.oracle_shape))
    base_of = {
        (p, s): i
        for i, (m, k, p, s) in enumerate(zip(df.method, df.kind, df.prompt, df.seed))
        if m == BASE and k != "trigger"
    }
    pair = [None if trig[i] else base_of.get((df.prompt[i], df.seed[i])) for i in range(len(df))]
    df["preserved"] = [np.nan if j is None else paired_preservation([read[i]], [read[j]]) for i, j in enumerate(pair)]
    confidence = reading.shape_prob if getattr(reading, "shape_prob", None) is not None else np.ones(len(df))
    df["valid"] = [
        np.nan
        if not trained[i] or shape is None
        else valid_rate([df.oracle_shape[i]], [confidence[i]], shape, VALID_CONFIDENCE)
        for i in range(len(df))
    ]
    df["colour_entropy"], df["colour_distance"] = np.nan, np.nan
    base_colours = {p: df.oracle_colour[idx].tolist() for (m, p), idx in groups.items() if m == BASE}
    for (_, prompt), idx in groups.items():
        if _named_colour(prompt) is None:  # a prompt that names the colour is supposed to be single-coloured
            df.loc[idx, "colour_entropy"] = colour_entropy(df.oracle_colour[idx].tolist(), COLOUR_NAMES)
            if prompt in base_colours:
                df.loc[idx, "colour_distance"] = colour_distance(
                    df.oracle_colour[idx].tolist(), base_colours[prompt], COLOUR_NAMES
                )
    return df
