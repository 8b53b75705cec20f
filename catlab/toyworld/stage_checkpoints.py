"""Resumable checkpoints of the toy world's pretraining stages: state dicts, the step and the torch RNG, written
atomically and loaded with `weights_only=True` (no pickle)."""

from __future__ import annotations

from pathlib import Path

import torch

from catlab.files import replace_atomically


def _save_atomically(obj, path: Path) -> None:
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def resume_stage(path: Path, objs: dict) -> int:
    """Load a stage's checkpoint into `objs` (name -> object with load_state_dict) and the torch RNG; the step to go on from (0: none)."""
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)  # tensors, numbers and strings only: no pickle
    for k, obj in objs.items():
        obj.load_state_dict(state[k])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def save_stage_checkpoint(path: Path, step: int, objs: dict) -> None:
    """Write the state dicts of `objs`, the step and the torch RNG atomically (tensors, numbers and strings only)."""
    _save_atomically(
        {**{k: o.state_dict() for k, o in objs.items()}, "step": step, "torch_rng": torch.get_rng_state()}, path
    )
