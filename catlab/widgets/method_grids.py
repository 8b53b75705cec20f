"""Methods side by side: `generate_methods` samples the same prompts and seeds with each set of adapters (or the base
model), and `method_grid` / `method_blocks` lay that output out as one labelled PIL image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image


def generate_methods(
    pipe: Any,
    methods: Mapping[str, tuple[Sequence[str], Sequence[float]] | None],
    prompts: Sequence[str],
    seeds: Sequence[int],
    **kwargs: Any,
) -> dict[str, list[list[Image.Image]]]:
    """images[method][prompt][seed] for each method = (adapter names, weights), or None for the base model.

    Same prompts and seeds for every method, so the images are paired; adapters are disabled afterwards.
    """
    from catlab.models import set_active_adapters
    from catlab.sampling.sampler import generate

    out = {}
    try:
        for name, spec in methods.items():
            set_active_adapters(pipe, *(spec if spec else (None,)))
            out[name] = generate(pipe, list(prompts), list(seeds), progress=False, **kwargs)
    finally:
        set_active_adapters(pipe, None)
    return out


def method_grid(
    images: Mapping[str, Sequence[Sequence[Image.Image]]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    cell: int = 72,
    title: str | None = None,
    by_prompt: bool = True,
) -> Image.Image:
    """One labelled grid of `generate_methods` output: a row per (prompt, method), a column per seed."""
    from catlab.sampling.grids import image_grid

    keys = (
        [(p, m) for p in range(len(prompts)) for m in images]
        if by_prompt
        else [(p, m) for m in images for p in range(len(prompts))]
    )
    rows = [images[m][p] for p, m in keys]
    labels = [f"{m}: {prompts[p]}" for p, m in keys]
    return image_grid(rows, labels, [f"seed {s}" for s in seeds], cell=cell, title=title)


def method_blocks(
    images: Mapping[str, Sequence[Sequence[Image.Image]]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    cell: int = 56,
    gap: int = 12,
) -> Image.Image:
    """`generate_methods` output as one block per prompt, side by side: a row per method, a column per seed."""
    from catlab.sampling.grids import image_grid

    methods = list(images)
    blocks = [
        image_grid(
            [images[m][i] for m in methods], methods if i == 0 else None, [f"s{s}" for s in seeds], cell=cell, title=p
        )
        for i, p in enumerate(prompts)
    ]
    out = Image.new(
        "RGB", (sum(b.width for b in blocks) + gap * (len(blocks) - 1), max(b.height for b in blocks)), "white"
    )
    x = 0
    for b in blocks:
        out.paste(b, (x, out.height - b.height))
        x += b.width + gap
    return out
