"""catlab: knowledge-preserving adapter training (Contrastive Adapter Training) for diffusion models.

Heavy modules (torch, diffusers) load on first use, so `import catlab` stays fast.
"""

from __future__ import annotations

__version__ = "0.2.0"

_EXPORTS = {  # public name -> the module that defines it (one name, one meaning: see tests/test_project.py)
    "TrainConfig": "config",
    "ConceptConfig": "config",
    "load_config": "config",
    "validate_concept_folder": "data.concepts",
    "ConceptDataset": "data.dataset",
    "load_base": "models.base",
    "add_lora": "models.lora",
    "load_lora": "models.lora",
    "save_lora": "models.lora",
    "set_active_adapters": "models.lora",
    "adapters_disabled": "models.lora",
    "cat_loss": "training.losses",
    "train": "training.loop",
    "TrainCallback": "training.callbacks",
    "generate": "sampling.sampler",
    "image_grid": "sampling.grids",
    "evaluate": "evaluation.protocol",
    "load_embedder": "evaluation.embedders",
    "run_demo": "demo.experiment",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'catlab' has no attribute {name!r}")
