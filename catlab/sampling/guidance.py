"""Where classifier-free guidance's unconditional branch comes from: the adapted model, or the base model.

Sampling with guidance s computes eps = eps(uncond) + s * (eps(prompt) - eps(uncond)) (Ho & Salimans 2022,
arXiv 2207.12598). Every pipeline runs both branches through the same, adapted UNet. An adapter that changes its
caption-blind layers (self-attention, convolutions) moves eps(uncond) too, and guidance then pushes *every* prompt,
the class prompt included, away from wherever the unconditional branch went. Taking the unconditional branch from
the base model (the adapters switched off for that half of the batch) removes that path: what a prompt draws then
differs from the base model's only by how the adapter changed eps(prompt). On the toy world it is a diagnostic,
not a cure (docs/results.md, "where does a concept live?").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from catlab.models.lora import adapters_disabled

UNCONDITIONAL_SOURCES = (
    "adapted",
    "base",
)  # "adapted": what every pipeline does; "base": the adapters off for that branch


def check_unconditional(source: str) -> str:
    """`source` if it names an unconditional branch, else a ValueError that lists the choices."""
    if source not in UNCONDITIONAL_SOURCES:
        raise ValueError(
            f"unconditional={source!r}: choose 'adapted' (the adapter's own unconditional branch, as every "
            "pipeline samples) or 'base' (classifier-free guidance's unconditional half from the base model)"
        )
    return source


@contextmanager
def unconditional_from_base(unet: torch.nn.Module) -> Iterator[None]:
    """Inside the block, a diffusers pipeline's guided UNet call runs its unconditional half with the adapters off.

    diffusers' Stable Diffusion pipelines call the UNet once per step on [unconditional | conditional] rows when
    guidance_scale > 1; call this only then (with guidance 1 there is no unconditional half to split).
    """
    original = unet.forward

    def split_forward(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        half = sample.shape[0] // 2  # rows [:half] are the unconditional (or negative-prompt) branch
        if sample.shape[0] != 2 * half:
            raise RuntimeError(
                f"unconditional_from_base: the UNet got {sample.shape[0]} rows, not an "
                "[unconditional | conditional] pair; sample with guidance_scale > 1"
            )

        def rows(x, part: slice):  # per-row tensors are split, scalars (one timestep for all rows) are not
            return x[part] if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == 2 * half else x

        first, second = slice(0, half), slice(half, None)
        with adapters_disabled(unet):
            uncond = original(
                sample[first], rows(timestep, first), encoder_hidden_states[first], *args, return_dict=False, **kwargs
            )[0]
        cond = original(
            sample[second], rows(timestep, second), encoder_hidden_states[second], *args, return_dict=False, **kwargs
        )[0]
        eps = torch.cat([uncond, cond])  # (2B, C, h, w), in the pipeline's order
        if not return_dict:
            return (eps,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=eps)

    unet.forward = split_forward  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    try:
        yield
    finally:
        del unet.forward
