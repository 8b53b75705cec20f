"""Shared fixtures: a tiny toy world built by the real recipe (a few steps), so tests never need the shipped weights."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """A complete toy-world asset folder (pipeline/, clip/, oracle.safetensors) from a few-step pretraining."""
    from catlab.toyworld.pretrain import PretrainConfig, pretrain

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("toyworld_tiny")
    pretrain(out, PretrainConfig.tiny(), work_dir=out / "_work")
    return out


@pytest.fixture()
def toyworld_env(tiny_assets, monkeypatch):
    """Point catlab's "toyworld" at the tiny assets for one test."""
    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
    return tiny_assets


@pytest.fixture(scope="session")
def tiny_pipeline_path(tiny_assets):
    return tiny_assets / "pipeline"


@pytest.fixture(scope="session")
def concept_dir(tmp_path_factory):
    """The toy concept two_tone_circle exported as an ordinary folder of images and captions."""
    from catlab.toyworld.world import export_concept

    return export_concept("two_tone_circle", tmp_path_factory.mktemp("concept") / "two_tone_circle")


@pytest.fixture(scope="session")
def tiny_clip_root(tmp_path_factory):
    """An untrained toy CLIP saved exactly as the pretraining recipe saves it (seconds, not the minute of `tiny_assets`)."""
    import torch

    from catlab.toyworld import build

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("toy_assets")
    tok = build.build_tokenizer()
    build.build_clip(tok).save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    build.build_clip_image_processor().save_pretrained(root / "clip")
    return root
