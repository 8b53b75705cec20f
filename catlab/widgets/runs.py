"""A notebook's training runs survive the notebook being run again: a finished run with the same settings is
reused, an interrupted one resumes from its last checkpoint (or, with none, trains again), and a run folder trained
with other settings is never overwritten (the error says what to change)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# fields that say where and how a run is watched, not what it learns: they may change between a run and its reuse
_BOOKKEEPING = {
    "output_dir",
    "resume_from_checkpoint",
    "report_to",
    "validate_every",
    "log_every",
    "checkpoints_total_limit",
}


def train_or_resume(cfg: Any, callbacks: list | tuple = (), progress: bool = True) -> Any:
    """Train `cfg`, resume it, or reuse it: returns the TrainResult either way."""
    from catlab.config import TrainConfig, load_config
    from catlab.training.callbacks import TrainResult
    from catlab.training.loop import train

    out = Path(cfg.output_dir)
    if not (out / "config.yaml").exists():
        return train(cfg, callbacks=callbacks, progress=progress)
    saved: TrainConfig = load_config(out / "config.yaml")
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in _BOOKKEEPING and saved.to_dict().get(k) != v)
    if changed:
        raise FileExistsError(
            f"{out} holds a run trained with other settings ({', '.join(changed)} differ); "
            "use another run name, or fresh=True in setup_notebook to start this notebook's runs over"
        )
    if _finished(out, cfg.steps):
        print(f"{out.name}: already trained with these settings; reusing it (fresh=True starts over)")
        history = (
            [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            if (out / "metrics.jsonl").exists()
            else []
        )
        result = TrainResult(out, out / "adapter", history, reused=True)
        for cb in callbacks:  # a reused run has no steps to report: only its end, with the history it had
            cb.on_end(result)
        return result
    if any((out / "checkpoints").glob("step-*")):
        print(f"{out.name}: resuming from its last checkpoint")
        return train(cfg, resume=True, callbacks=callbacks, progress=progress)
    # an interrupted run with these settings and nothing to resume from: nothing in it can be used again
    print(f"{out.name}: unfinished, with no checkpoint to resume from; training it again")
    shutil.rmtree(out)
    return train(cfg, callbacks=callbacks, progress=progress)


def _finished(out: Path, steps: int) -> bool:
    meta = out / "adapter" / "catlab_adapter.json"
    if not meta.is_file():
        return False
    recorded = json.loads(meta.read_text())
    return int(recorded.get("steps", recorded.get("metadata", {}).get("steps", -1))) == steps
