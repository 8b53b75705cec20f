"""Helpers shared by the tests that build LoRA adapters on the tiny toy world."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from catlab.models import LORA_WEIGHT_NAME, lora_parameters
from catlab.tensors import encode_prompts


def unet_inputs(pipe, b=3, seed=0):
    """Noisy latents, timesteps and the text states of "a sks circle" and "a circle" for `pipe`'s UNet."""
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    z = torch.randn(b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    with torch.no_grad():
        captions = ("a sks circle", "a circle")
        cond, cond_free = [encode_prompts(pipe.tokenizer, pipe.text_encoder, [c] * b) for c in captions]  # (b, L, D)
    return z, t, cond, cond_free


def randomise_lora(model, seed=1):
    """Non-zero LoRA weights, so that an adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def tiny_run_config(concept_dir, out, **overrides):
    """A few-step TrainConfig on the exported toy concept (sks circle): what the training tests vary."""
    from catlab.config import ConceptConfig, TrainConfig

    base = dict(
        concepts=[ConceptConfig(str(concept_dir), "sks", "circle")],
        output_dir=str(out),
        steps=6,
        batch_size=2,
        checkpoint_every=3,
        validate_every=0,
        log_every=1,
        random_flip=False,
    )
    return TrainConfig(**{**base, **overrides})


def inject_text_encoder_lora(perturb: float = 0.0, patch=setattr):
    """Let `train_text_encoder` run whatever the peft version (transformers 5 refuses text-encoder adapters with peft
    < 0.22): the training loop's text-encoder LoRA is injected through peft directly, as diffusers' loader does.
    `perturb` > 0 gives its B matrices random values (seeded), so that the adapted text encoder differs from the base
    one from the first step. `patch` is monkeypatch.setattr in a test, plain setattr in a launched script."""
    import catlab.training.start as start

    real = start.add_lora

    def add_lora(model, rank=4, alpha=None, dropout=0.0, target_modules=(), adapter_name="default"):
        from peft import LoraConfig, inject_adapter_in_model
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):  # the UNet: catlab's own add_lora
            return real(model, rank, alpha, dropout, target_modules, adapter_name)
        cfg = LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            lora_dropout=dropout,
            target_modules=list(target_modules),
        )
        inject_adapter_in_model(cfg, model, adapter_name=adapter_name)
        model.peft_config = {adapter_name: cfg}
        if perturb:
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * perturb)
        return sum(p.numel() for p in lora_parameters(model))

    patch(start, "add_lora", add_lora)


# the demo's CAT: the guided term on the base model's class images, on half as many rows as concept images
DEMO_CAT = dict(regime="cat", cat_anchor="class", cat_guidance=3.0, cat_share=0.5, cat_lambda=4.0)


def adapter_weights(result) -> dict[str, torch.Tensor]:
    """The LoRA tensors a training run saved."""
    return load_file(result.adapter_dir / LORA_WEIGHT_NAME)


def assert_same_weights(a: dict, b: dict) -> None:
    """Equal to float tolerance. Summing a batch in other chunks changes the gradients by rounding only, but AdamW's
    normalised step turns that into up to ~1e-4 on a weight whose gradient is near 0 (measured: a relative
    difference of at most 2e-3 per tensor). A wrong batch, loss scale or LR moves weights by about the LR (2e-3)
    in other directions: a relative difference of order 1."""
    assert a.keys() == b.keys()
    for k in a:
        assert float((a[k] - b[k]).norm()) <= 1e-2 * float(b[k].norm()) + 1e-7, k
        assert float((a[k] - b[k]).abs().max()) <= 5e-4, k
