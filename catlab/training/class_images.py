"""Class images: what the base model itself draws for the class prompt ("a circle"), drawn once, cached on disk with a
manifest, and reused. DreamBooth's prior preservation (Ruiz et al. 2023, arXiv 2208.12242) trains on them; CAT with
`cat_anchor: class` puts its term on them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from catlab.config import TrainConfig
from catlab.files import save_image_atomic, write_json_atomic
from catlab.tensors import pixels_to_unit_range

SEED_BASE = 10_000  # class image i is drawn from seed SEED_BASE + i: the same image however the work is split


def prepare(pipe, cfg: TrainConfig, out: Path, resolution: int, acc=None) -> tuple[torch.Tensor | None, list, float]:
    """The class images a run needs (none unless `cfg.needs_class_images`): drawn once by the base model in the
    precision it has now, cached under `class_images_dir` (default out/class_images), and loaded.

    With an accelerate `acc` of several processes each draws its share, then all wait for the others: the work is
    not repeated per process, and every process loads the same images. Returns (images (N, 3, R, R) in [-1, 1] or
    None, the class prompt of each image, seconds spent)."""
    if not cfg.needs_class_images:
        return None, [], 0.0
    t0 = time.time()
    rank, n_procs = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    folders = class_image_folders(cfg, out)
    for prompt, folder in folders.items():
        draw_missing(pipe, prompt, cfg.num_class_images, folder, resolution, shard=(rank, n_procs))
    if acc is not None:
        acc.wait_for_everyone()
    paths, prompts = [], []
    for prompt, folder in folders.items():
        if rank == 0:
            _write_manifest(folder, _manifest(pipe, prompt, resolution))
        got = _paths(folder, cfg.num_class_images)
        paths += got
        prompts += [prompt] * len(got)
    return load_class_images(paths, resolution), prompts, time.time() - t0


def class_image_folders(cfg: TrainConfig, out: Path) -> dict[str, Path]:
    """Class prompt -> its folder: `class_images_dir` (default out/class_images) itself for one prompt, a subfolder
    per prompt for several."""
    folder = Path(cfg.class_images_dir) if cfg.class_images_dir else Path(out) / "class_images"
    prompts = cfg.class_prompts()
    return {p: folder if len(prompts) == 1 else folder / p.replace(" ", "_") for p in prompts}


def generate_class_images(pipe, class_prompt: str, n: int, folder: Path, resolution: int) -> list[Path]:
    """DreamBooth's class images: generated once by the base model, cached on disk with a manifest, and reused."""
    draw_missing(pipe, class_prompt, n, folder, resolution)
    _write_manifest(folder, _manifest(pipe, class_prompt, resolution))
    return _paths(folder, n)


def draw_missing(pipe, class_prompt: str, n: int, folder: Path, resolution: int, shard: tuple[int, int] = (0, 1)):
    """Draw the first n class images of `folder` that are not there yet, only those with index % count == rank for
    shard (rank, count). A folder that holds class images of another prompt, model or resolution is refused."""
    from catlab.sampling.sampler import generate

    rank, count = shard
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    meta = _manifest(pipe, class_prompt, resolution)
    have = json.loads(manifest.read_text()) if manifest.exists() else None
    if have and {**{k: have.get(k) for k in meta}, "model": _model_key(str(have.get("model", "")))} != meta:
        raise FileExistsError(f"{folder} holds class images for {have}, not {meta}; choose another class_images_dir")
    missing = [i for i, p in enumerate(_paths(folder, n)) if not p.exists() and i % count == rank]
    for k in range(0, len(missing), 64):
        chunk = missing[k : k + 64]
        imgs = generate(pipe, [class_prompt], [SEED_BASE + i for i in chunk], progress=False)[0]
        for i, im in zip(chunk, imgs):
            save_image_atomic(im, folder / f"class_{i:04d}.png")


def load_class_images(paths: list[Path], resolution: int) -> torch.Tensor:
    """The class images as one tensor (N, 3, R, R) in [-1, 1]."""
    from PIL import Image

    size = (resolution, resolution)
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize(size, Image.BICUBIC)) for p in paths])  # (N,R,R,3)
    return pixels_to_unit_range(arr)  # (N, 3, R, R) in [-1, 1]


def _paths(folder: Path, n: int) -> list[Path]:
    return [folder / f"class_{i:04d}.png" for i in range(n)]


def _write_manifest(folder: Path, meta: dict) -> None:
    """Write the manifest unless it already says the same (a cached folder is left untouched)."""
    manifest = folder / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()) != meta:
        write_json_atomic(manifest, meta)


def _manifest(pipe, class_prompt: str, resolution: int) -> dict:
    model = _model_key(str(getattr(pipe, "name_or_path", "")))
    return {"prompt": class_prompt, "model": model, "resolution": resolution}


def _model_key(name_or_path: str) -> str:
    """A local model folder as its absolute path, so that the same folder named relatively (CATLAB_TOYWORLD_DIR=runs/x)
    or absolutely is one model; a hub id as it is."""
    local = Path(name_or_path).expanduser()
    return str(local.resolve()) if name_or_path and local.exists() else name_or_path
