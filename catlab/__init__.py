"""catlab: knowledge-preserving adapter training (Contrastive Adapter Training) for diffusion models.

Heavy modules (torch, diffusers) load on first use, so `import catlab` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "config", "ConceptConfig": "config", "load_config": "config",
    "train": "train", "TrainCallback": "train",
    "load_base": "models", "add_lora": "models", "load_lora": "models", "save_lora": "models",
    "set_active_adapters": "models", "adapters_disabled": "models",
    "generate": "sample", "image_grid": "sample",
    "evaluate": "evaluation", "load_embedder": "embedders",
    "run_demo": "demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'catlab' has no attribute {name!r}")
