"""Sampling: prompts x seeds with the base model or any adapters, deterministic per (prompt, seed)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from PIL import Image
from tqdm.auto import tqdm

from catlab.models.base import enable_vae_slicing, sampling_defaults
from catlab.sampling.guidance import check_unconditional, unconditional_from_base

# images per pipeline call. CPU: what the toy world's numbers were drawn with. CUDA: 8 keeps SD 1.5 at 512 px well
# inside a 15 GB T4, where 32 in fp32 with one decode for all needs about 37 GiB (both estimated from measured
# weights and decode sizes: docs/training.md, "What fits on which GPU")
CPU_BATCH_SIZE, CUDA_BATCH_SIZE = 32, 8


def default_batch_size(pipe) -> int:
    """Images per pipeline call when the caller does not say: small on a GPU, where memory is the limit."""
    return CUDA_BATCH_SIZE if pipe.device.type == "cuda" else CPU_BATCH_SIZE


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    negative_prompt: str | None = None,
    unconditional: str = "adapted",
) -> list[list[Image.Image]]:
    """images[i][j] = `prompts[i]` drawn from seed `seeds[j]`.

    Each image gets its own torch.Generator, so an image depends only on its (prompt, seed) and the
    sampler settings, not on how the work was batched. unconditional="base" takes classifier-free guidance's
    unconditional (or negative-prompt) branch from the base model, the adapters off for it (catlab.sampling.guidance).
    batch_size None: `default_batch_size` (32 on a CPU, 8 on CUDA). On CUDA the pipeline's VAE is switched to
    decoding one image at a time (`enable_vae_slicing`), however the pipeline was loaded.
    """
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    if not seeds:
        raise ValueError("generate() needs at least one seed")
    batch_size = default_batch_size(pipe) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"generate(): batch_size={batch_size}; it must be >= 1 (images per pipeline call)")
    enable_vae_slicing(pipe)
    d = sampling_defaults(pipe)
    steps = num_inference_steps or d["num_inference_steps"]
    guidance = d["guidance_scale"] if guidance_scale is None else guidance_scale
    from_base = check_unconditional(unconditional) == "base" and guidance > 1  # guidance 1 has no unconditional branch
    jobs = [(i, j) for i in range(len(prompts)) for j in range(len(seeds))]
    out: list[list[Image.Image | None]] = [[None] * len(seeds) for _ in prompts]
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    batches = [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]
    for batch in tqdm(batches, desc="sampling", disable=not progress or len(batches) < 2):
        gens = [torch.Generator(device=gen_device).manual_seed(int(seeds[j])) for _, j in batch]
        with torch.no_grad(), unconditional_from_base(pipe.unet) if from_base else nullcontext():
            images = pipe(
                prompt=[prompts[i] for i, _ in batch],
                generator=gens,
                num_inference_steps=steps,
                guidance_scale=guidance,
                negative_prompt=[negative_prompt] * len(batch) if negative_prompt else None,
                height=d["resolution"],
                width=d["resolution"],
                output_type="pil",
            ).images
        for (i, j), im in zip(batch, images):
            out[i][j] = im
    return out  # type: ignore[return-value]
