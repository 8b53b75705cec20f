"""Helpers shared by the tests that build LoRA adapters on the tiny toy world."""

from __future__ import annotations

import torch

from catlab.models import lora_parameters


def unet_inputs(pipe, b=3, seed=0):
    """Noisy latents, timesteps and the text states of "a sks circle" and "a circle" for `pipe`'s UNet."""
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    z = torch.randn(b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ids = pipe.tokenizer(["a sks circle"] * b, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    ids_free = pipe.tokenizer(["a circle"] * b, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return z, t, pipe.text_encoder(ids)[0], pipe.text_encoder(ids_free)[0]


def randomise_lora(model, seed=1):
    """Non-zero LoRA weights, so that an adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def tiny_run_config(concept_dir, out, **overrides):
    """A few-step TrainConfig on the exported toy concept (sks circle): what the training tests vary."""
    from catlab.config import ConceptConfig, TrainConfig

    base = dict(concepts=[ConceptConfig(str(concept_dir), "sks", "circle")], output_dir=str(out), steps=6, batch_size=2,
                checkpoint_every=3, validate_every=0, log_every=1, random_flip=False)
    return TrainConfig(**{**base, **overrides})
