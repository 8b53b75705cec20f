"""Class images: what the base model itself draws for the class prompt ("a circle"), drawn once, cached on disk with a
manifest, and reused. DreamBooth's prior preservation (Ruiz et al. 2023, arXiv 2208.12242) trains on them; CAT with
`cat_anchor: class` puts its term on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from catlab.files import save_image_atomic, write_json_atomic
from catlab.tensors import pixels_to_unit_range


def generate_class_images(pipe, class_prompt: str, n: int, folder: Path, resolution: int) -> list[Path]:
    """DreamBooth's class images: generated once by the base model, cached on disk with a manifest, and reused."""
    from catlab.sampling.sampler import generate

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    meta = {"prompt": class_prompt, "model": str(getattr(pipe, "name_or_path", "")), "resolution": resolution}
    have = json.loads(manifest.read_text()) if manifest.exists() else None
    paths = [folder / f"class_{i:04d}.png" for i in range(n)]
    if have and {k: have.get(k) for k in meta} == meta and all(p.exists() for p in paths):
        return paths
    if have and {k: have.get(k) for k in meta} != meta:
        raise FileExistsError(f"{folder} holds class images for {have}, not {meta}; choose another class_images_dir")
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    for k in range(0, len(missing), 64):
        chunk = missing[k : k + 64]
        imgs = generate(pipe, [class_prompt], [10_000 + i for i in chunk], progress=False)[0]
        for i, im in zip(chunk, imgs):
            save_image_atomic(im, paths[i])
    write_json_atomic(manifest, meta)
    return paths


def load_class_images(paths: list[Path], resolution: int) -> torch.Tensor:
    """The class images as one tensor (N, 3, R, R) in [-1, 1]."""
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for p in paths])
    return pixels_to_unit_range(arr)  # (N, 3, R, R)
