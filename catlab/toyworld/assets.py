"""Where the shipped toy-world weights live, and clear errors when they are missing or broken."""

from __future__ import annotations

import os
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toyworld"
REBUILD_HINT = "rebuild it with `catlab toyworld pretrain --out catlab/assets/toyworld` (about an hour on 2 CPU cores)"
_REQUIRED = {
    "pipeline": [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "scheduler/scheduler_config.json",
    ],
    "clip": ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"],
    "oracle": ["oracle.safetensors"],
}


class ToyWorldAssetError(FileNotFoundError):
    """A shipped toy-world file is missing or unreadable."""


def asset_root() -> Path:
    """The asset folder: $CATLAB_TOYWORLD_DIR if set (tests, custom rebuilds), else the one shipped in the package."""
    return Path(os.environ.get("CATLAB_TOYWORLD_DIR", ASSET_DIR))


def toyworld_path(part: str = "pipeline", root: str | Path | None = None) -> Path:
    """Path of a toy-world part ('pipeline', 'clip' or 'oracle'), checked for completeness."""
    if part not in _REQUIRED:
        raise ValueError(f"unknown toy-world part {part!r}; choose one of {sorted(_REQUIRED)}")
    base = Path(root) if root else asset_root()
    folder = base if part == "oracle" else base / part
    for rel in _REQUIRED[part]:
        f = folder / rel
        if not f.is_file() or f.stat().st_size == 0:
            raise ToyWorldAssetError(f"toy-world {part}: missing or empty file {f}; {REBUILD_HINT}")
    return folder if part != "oracle" else base / "oracle.safetensors"


def load_oracle(root: str | Path | None = None):
    """The trained oracle (eval mode), from an asset folder (None: the shipped one) or its oracle.safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from catlab.toyworld.oracle import Oracle

    given_file = root is not None and Path(root).is_file()
    path = Path(root) if given_file else toyworld_path("oracle", root)
    try:
        state = load_file(path)
        oracle = Oracle()
        oracle.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ToyWorldAssetError(f"toy-world oracle {path} is corrupted ({e}); {REBUILD_HINT}") from e
    return oracle.eval()
