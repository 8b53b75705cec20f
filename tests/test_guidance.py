"""Classifier-free guidance's unconditional branch from the base model: the split is exact, and it reaches sampling
and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_helpers import randomise_lora, unet_inputs

from catlab.models import adapters_disabled, add_lora, load_base
from catlab.sampling.guidance import unconditional_from_base
from catlab.sampling.sampler import generate


def empty_caption_states(pipe, b):
    ids = pipe.tokenizer(
        [""] * b, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_unconditional_half_is_the_base_model_and_the_conditional_half_the_adapter(toyworld_env):
    pipe = load_base("toyworld")
    add_lora(pipe.unet, rank=4)
    randomise_lora(pipe.unet)
    z, t, c, _ = unet_inputs(pipe, b=2)
    u = empty_caption_states(pipe, 2)
    zz, tt, states = (
        torch.cat([z, z]),
        torch.cat([t, t]),
        torch.cat([u, c]),
    )  # the pipeline's [unconditional | conditional] rows
    with torch.no_grad():
        with adapters_disabled(pipe.unet):
            base_uncond = pipe.unet(z, t, encoder_hidden_states=u).sample
        adapted_uncond = pipe.unet(z, t, encoder_hidden_states=u).sample
        adapted_cond = pipe.unet(z, t, encoder_hidden_states=c).sample
        with unconditional_from_base(pipe.unet):
            split = pipe.unet(zz, tt, encoder_hidden_states=states, return_dict=False)[0]
            as_output = pipe.unet(
                zz, t[0], encoder_hidden_states=states
            ).sample  # one timestep for all rows, as pipelines pass it
        after = pipe.unet(zz, tt, encoder_hidden_states=states).sample
    assert not torch.allclose(base_uncond, adapted_uncond, atol=1e-4), (
        "the random adapter must move the unconditional branch"
    )
    torch.testing.assert_close(split[:2], base_uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split[2:], adapted_cond, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), adapters_disabled(pipe.unet):
        base_t0 = pipe.unet(z, t[0], encoder_hidden_states=u).sample
    torch.testing.assert_close(as_output[:2], base_t0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[:2], adapted_uncond, atol=1e-5, rtol=1e-5)  # outside the block: the adapter again
    assert "forward" not in vars(pipe.unet), "the UNet's own forward must come back"
    with unconditional_from_base(pipe.unet), pytest.raises(RuntimeError, match="guidance_scale > 1"):
        pipe.unet(z[:1], t[:1], encoder_hidden_states=c[:1])


def test_sampling_with_the_base_unconditional_branch(toyworld_env):
    pipe = load_base("toyworld")
    kw = {"num_inference_steps": 3, "progress": False}
    plain = generate(pipe, ["a circle"], [0, 1], **kw)[0]
    same = generate(pipe, ["a circle"], [0, 1], unconditional="base", **kw)[
        0
    ]  # no adapter: both branches are the base model
    for a, b in zip(plain, same):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert diff.max() <= 1, (
            "without an adapter the option must change nothing (half batches differ by float noise only)"
        )
    add_lora(pipe.unet, rank=4)
    randomise_lora(pipe.unet, seed=3)
    adapted = generate(pipe, ["a circle"], [0, 1], **kw)[0]
    from_base = generate(pipe, ["a circle"], [0, 1], unconditional="base", **kw)[0]
    assert any(
        np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() > 8 for a, b in zip(adapted, from_base)
    ), "with an adapter, the unconditional branch's source must change the images"
    unguided = generate(pipe, ["a circle"], [0], guidance_scale=1.0, **kw)[0][
        0
    ]  # guidance 1 has no unconditional branch
    unguided_base = generate(pipe, ["a circle"], [0], guidance_scale=1.0, unconditional="base", **kw)[0][0]
    assert np.array_equal(np.asarray(unguided), np.asarray(unguided_base))
    with pytest.raises(ValueError, match="choose 'adapted'"):
        generate(pipe, ["a circle"], [0], unconditional="lora", **kw)


@pytest.mark.filterwarnings("ignore:prompt similarity")  # the stand-in embedder has no text tower
def test_evaluate_keeps_apart_the_images_of_each_unconditional_source(tmp_path):
    from eval_fakes import FakePipe, evaluate_with, fake_activate, fake_generate, solid

    from catlab.evaluation.embedders import CallableEmbedder

    seen = []

    def recording_generate(pipe, prompts, seeds, **kw):
        seen.append((pipe.active, kw.get("unconditional", "adapted")))
        return fake_generate(pipe, prompts, seeds)

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "pytorch_lora_weights.safetensors").write_bytes(b"cat")
    emb = CallableEmbedder(lambda ims: np.stack([np.asarray(i, dtype=float).mean((0, 1)) for i in ims]))
    kw = dict(
        trigger="sks",
        class_word="circle",
        templates=["a {trigger} {class}"],
        seeds=2,
        embedder=emb,
        out_dir=tmp_path / "eval",
        generate_fn=recording_generate,
        activate_fn=fake_activate,
        progress=False,
    )
    evaluate_with(FakePipe(), {"cat": tmp_path / "cat"}, [solid((245, 120, 190))], **kw)
    evaluate_with(FakePipe(), {"cat": tmp_path / "cat"}, [solid((245, 120, 190))], unconditional="base", **kw)
    assert seen == [(None, "adapted"), ("cat", "adapted"), ("cat", "base")], (
        "the base model's images are shared, the adapter's are not"
    )
    with pytest.raises(ValueError, match="choose 'adapted'"):
        evaluate_with(FakePipe(), {"cat": tmp_path / "cat"}, [solid((245, 120, 190))], unconditional="both", **kw)


def test_guided_cat_term_holds_the_guided_class_prediction(toyworld_env):
    from catlab.training.losses import CatTerm, cat_loss, mse

    pipe = load_base("toyworld")
    z, t, c, cf = unet_inputs(pipe, b=2)
    null = empty_caption_states(pipe, 1)  # (1, L, D)
    target = torch.randn_like(z)
    add_lora(pipe.unet, rank=4)
    fresh = cat_loss(pipe.unet, z, t, c, cf, target, term=CatTerm(guidance=3.0, cond_null=null))
    assert float(fresh.cat.detach()) == pytest.approx(0.0, abs=1e-10), (
        "a fresh adapter is the base model: nothing to hold"
    )
    randomise_lora(pipe.unet, seed=2)
    s = 3.0
    with torch.no_grad():
        terms = cat_loss(pipe.unet, z, t, c, cf, target, term=CatTerm(guidance=s, cond_null=null))
        d_free = pipe.unet(z, t, encoder_hidden_states=cf).sample
        d_null = pipe.unet(z, t, encoder_hidden_states=null.expand(2, -1, -1)).sample
        with adapters_disabled(pipe.unet):
            d_free = d_free - pipe.unet(z, t, encoder_hidden_states=cf).sample
            d_null = d_null - pipe.unet(z, t, encoder_hidden_states=null.expand(2, -1, -1)).sample
        paper = cat_loss(pipe.unet, z, t, c, cf, target)
    # the adapted and base *guided* predictions, eps(null) + s * (eps(c_free) - eps(null)), differ by s * d_free + (1 - s) * d_null
    expected = mse(s * d_free + (1 - s) * d_null, torch.zeros_like(z)) / s**2
    torch.testing.assert_close(terms.cat, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(paper.cat, mse(d_free, torch.zeros_like(z)), atol=1e-6, rtol=1e-4)
    assert float(d_null.abs().max()) > 1e-3 and not torch.allclose(terms.cat, paper.cat), (
        "the guided term must see eps(null) move"
    )
    with pytest.raises(ValueError, match="needs a scale > 1 and cond_null"):
        cat_loss(pipe.unet, z, t, c, cf, target, term=CatTerm(guidance=3.0))


def test_cat_guidance_is_checked_and_reaches_the_loss(toyworld_env, concept_dir, tmp_path, monkeypatch):
    from lora_helpers import tiny_run_config

    import catlab.training.loop as loop
    from catlab import train
    from catlab.config import TrainConfig
    from catlab.training.losses import cat_loss

    seen = []

    def spy(*args, **kw):
        seen.append((kw["term"].guidance, kw["term"].cond_null))
        return cat_loss(*args, **kw)

    monkeypatch.setattr(loop, "cat_loss", spy)
    train(
        tiny_run_config(concept_dir, tmp_path / "guided", steps=1, checkpoint_every=0, regime="cat", cat_guidance=3.0),
        progress=False,
    )
    ((guidance, null),) = seen
    assert guidance == 3.0 and null is not None and null.shape[0] == 1
    with pytest.raises(ValueError, match="cat_guidance=0.5"):
        TrainConfig(cat_guidance=0.5)
    with pytest.raises(ValueError, match="with cat_null_share 0"):
        TrainConfig(cat_guidance=3.0, cat_null_share=0.5)
