"""What a training run tells the outside world: `TrainCallback` hooks (notebooks draw live loss curves and sample
grids with them) and the `TrainResult` it returns. Imports nothing heavy, so widgets can subclass it cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class TrainCallback:
    """Hooks for notebooks (live loss curves, sample grids). Override what you need."""

    def on_step(self, step: int, logs: dict) -> None: ...
    def on_validation(self, step: int, images: dict[str, list]) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    class_images_s: float = 0.0  # DreamBooth's up-front cost
    reused: bool = False  # True: a finished run found on disk (widgets.train_or_resume), nothing trained now
