"""Where CAT's term is taken: which rows carry it (cat_share, cat_anchor), what they are captioned with
(cat_null_share, anchor_prompts), with which λ (cat_lambda_warmup); and how many class rows DreamBooth sees."""

from __future__ import annotations

import pytest
import torch
from lora_helpers import tiny_run_config

import catlab.training.loop as train_module
from catlab.config import TrainConfig
from catlab.models import load_base
from catlab.training.loop import train
from catlab.training.losses import cat_loss, prior_preservation_loss


def spy_on_cat_loss(monkeypatch, record) -> list:
    """Let training call cat_loss as usual, keeping `record(noisy, t, cond_free, kw)` of each call."""
    seen = []

    def spy(unet, noisy, t, cond, cond_free, target, **kw):
        seen.append(record(noisy, t, cond_free, kw))
        return cat_loss(unet, noisy, t, cond, cond_free, target, **kw)

    monkeypatch.setattr(train_module, "cat_loss", spy)
    return seen


def encode_captions(captions: list[str]) -> torch.Tensor:
    """The toy base model's text states of `captions`, (N, L, D), as training encodes them."""
    pipe = load_base("toyworld")
    ids = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_cat_null_share_holds_the_unconditional_caption_too(toyworld_env, concept_dir, tmp_path, monkeypatch):
    seen = spy_on_cat_loss(monkeypatch, lambda noisy, t, free, kw: free.detach().clone())
    train(tiny_run_config(concept_dir, tmp_path / "null", steps=1, batch_size=2, cat_null_share=0.5))
    null = encode_captions([""])[0]  # (L, D): CFG's unconditional caption
    assert len(seen) == 1 and seen[0].shape[0] == 2
    assert torch.allclose(seen[0][0], null, atol=1e-6), "the first half of the CAT rows must use the empty caption"
    assert not torch.allclose(seen[0][1], null, atol=1e-3), "the rest keep their trigger-free caption"
    with pytest.raises(ValueError, match="cat_null_share=1.5"):
        TrainConfig(cat_null_share=1.5)


def test_cat_lambda_warmup_ramps_the_term_linearly(toyworld_env, concept_dir, tmp_path, monkeypatch):
    seen = spy_on_cat_loss(monkeypatch, lambda noisy, t, free, kw: kw["lam"])
    train(tiny_run_config(concept_dir, tmp_path / "warm", steps=4, batch_size=2, cat_lambda=2.0,
                          cat_lambda_warmup=0.5))  # fmt: skip
    assert seen == pytest.approx([1.0, 2.0, 2.0, 2.0]), "λ rises over the first half of the updates, then holds"
    seen.clear()
    train(tiny_run_config(concept_dir, tmp_path / "const", steps=2, batch_size=2, cat_lambda=2.0))
    assert seen == pytest.approx([2.0, 2.0]), "without a warmup λ is cat_lambda from the first update"
    with pytest.raises(ValueError, match="cat_lambda_warmup=1.5"):
        TrainConfig(cat_lambda_warmup=1.5)


def test_cat_anchor_class_puts_the_cat_term_on_the_base_models_class_images(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    seen = spy_on_cat_loss(
        monkeypatch, lambda noisy, t, free, kw: (noisy.shape[0], kw["term"].anchors, free.detach().clone())
    )
    cfg = tiny_run_config(concept_dir, tmp_path / "anchor", steps=1, batch_size=2, cat_anchor="class",
                          num_class_images=3)  # fmt: skip
    train(cfg)
    assert len(list((tmp_path / "anchor" / "class_images").glob("*.png"))) == 3  # drawn once by the base model
    ((n, anchors, free),) = seen
    assert n == 2 and anchors is not None and anchors[0].shape[0] == 2  # concept rows + as many anchor rows
    class_caption = encode_captions(["a circle"])[0]
    assert all(torch.allclose(row, class_caption, atol=1e-6) for row in free), (
        "anchor rows are captioned with the class prompt"
    )
    with pytest.raises(ValueError, match="cat_anchor='prior'"):
        TrainConfig(cat_anchor="prior")


def test_cat_anchor_both_holds_the_concepts_latents_and_the_class_images(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    seen = spy_on_cat_loss(
        monkeypatch, lambda noisy, t, free, kw: (noisy.detach().clone(), t.clone(), kw["term"].anchors, free.shape[0])
    )
    cfg = tiny_run_config(concept_dir, tmp_path / "both", steps=1, batch_size=4, cat_anchor="both", cat_share=0.5,
                          num_class_images=3)  # fmt: skip
    assert cfg.needs_class_images
    train(cfg)
    ((noisy, t, (z_anchor, t_anchor), n_free),) = seen
    assert noisy.shape[0] == 4 and z_anchor.shape[0] == 4 and n_free == 4, "2 concept rows + 2 class-image rows"
    assert torch.equal(z_anchor[:2], noisy[:2]) and torch.equal(t_anchor[:2], t[:2]), "the concept's rows first"
    assert not torch.equal(z_anchor[2:], noisy[2:]), "then the base model's class images"


def test_anchor_prompts_add_their_base_images_and_captions_to_the_anchors(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    seen = spy_on_cat_loss(monkeypatch, lambda noisy, t, free, kw: free.detach().clone())
    cfg = tiny_run_config(concept_dir, tmp_path / "anchor", steps=6, batch_size=2, cat_anchor="class",
                          num_class_images=2, anchor_prompts=["a square", "a star"])  # fmt: skip
    assert cfg.class_prompts() == ["a circle", "a square", "a star"]
    train(cfg)
    for prompt in ("a_circle", "a_square", "a_star"):  # one folder per prompt, drawn by the base model
        assert len(list((tmp_path / "anchor" / "class_images" / prompt).glob("*.png"))) == 2
    captions = encode_captions(["a circle", "a square", "a star"])  # (3, L, D)
    rows = torch.cat(seen)  # every anchor row of the 6 steps
    used = {k for row in rows for k in range(3) if torch.allclose(row, captions[k], atol=1e-6)}
    assert len(used) >= 2, "anchor rows are captioned with the prompts they were drawn for, not only the class"
    with pytest.raises(ValueError, match="name a trigger"):
        tiny_run_config(concept_dir, tmp_path / "x", anchor_prompts=["a sks square"])


def test_cat_share_puts_the_cat_term_on_fewer_rows(toyworld_env, concept_dir, tmp_path, monkeypatch):
    seen = spy_on_cat_loss(
        monkeypatch, lambda noisy, t, free, kw: (noisy.shape[0], kw["term"].anchors, free.shape[0], kw["term"].share)
    )
    train(tiny_run_config(concept_dir, tmp_path / "share", steps=1, batch_size=4, cat_share=0.5))
    train(tiny_run_config(concept_dir, tmp_path / "share_anchor", steps=1, batch_size=4, cat_share=0.5,
                          cat_anchor="class", num_class_images=3))  # fmt: skip
    (n, anchors, n_free, share), (n_a, anchors_a, n_free_a, share_a) = seen
    assert (n, anchors, n_free, share) == (4, None, 2, 0.5), "the paper's rows: the first half of the concept rows"
    assert n_a == 4 and anchors_a[0].shape[0] == 2 and n_free_a == 2 and share_a == 0.5, "two anchor images, not four"
    with pytest.raises(ValueError, match="cat_share=0"):
        TrainConfig(cat_share=0)


def test_prior_share_draws_fewer_class_images_per_dreambooth_step(toyworld_env, concept_dir, tmp_path, monkeypatch):
    seen = []

    def spy(pred, target, n_instance, *a, **kw):
        seen.append((pred.shape[0], n_instance))
        return prior_preservation_loss(pred, target, n_instance, *a, **kw)

    monkeypatch.setattr(train_module, "prior_preservation_loss", spy)
    common = dict(
        regime="dreambooth", steps=1, batch_size=4, num_class_images=3, class_images_dir=str(tmp_path / "class")
    )
    train(tiny_run_config(concept_dir, tmp_path / "full", **common))
    train(tiny_run_config(concept_dir, tmp_path / "half", prior_share=0.5, **common))
    assert seen == [(8, 4), (6, 4)], "4 concept rows, then 4 class rows (DreamBooth) or 2 (prior_share 0.5)"
    with pytest.raises(ValueError, match="prior_share=1.5"):
        TrainConfig(prior_share=1.5)
