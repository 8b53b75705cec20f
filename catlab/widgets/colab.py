"""Colab's doors, behind one small seam: photos in through Colab's own upload (no size limit, unlike a FileUpload
widget there), outputs on Google Drive so that a disconnect loses nothing, and the finished LoRA handed to the
browser as a download. Outside Colab each helper says what to do instead; tests pass a fake `ColabSeam`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIVE_ROOT = Path("/content/drive")  # where Colab mounts Google Drive


@dataclass
class ColabSeam:
    """The two google.colab modules catlab uses: `files` (upload, download) and `drive` (mount)."""

    files: Any
    drive: Any


def in_colab() -> bool:
    """True inside a Colab runtime."""
    return "google.colab" in sys.modules


def _colab(seam: ColabSeam | None) -> ColabSeam | None:
    if seam is not None:
        return seam
    if not in_colab():
        return None
    from google.colab import drive, files

    return ColabSeam(files, drive)


def outputs_on_drive(folder: str = "catlab", seam: ColabSeam | None = None, drive_root: Path = DRIVE_ROOT) -> Path:
    """Mount Google Drive (Colab asks for permission once) and return MyDrive/`folder`, created if missing."""
    colab = _colab(seam)
    if colab is None:
        raise RuntimeError("outputs_on_drive works in Colab only; elsewhere set out_root to any folder")
    colab.drive.mount(str(drive_root))
    out = drive_root / "MyDrive" / folder
    out.mkdir(parents=True, exist_ok=True)
    return out


def upload_photos(folder: str | Path, seam: ColabSeam | None = None) -> list[Path]:
    """Ask for photos with Colab's own upload dialog and save them into `folder` (never overwriting another file)."""
    from catlab.widgets.concept_editor import save_photos

    colab = _colab(seam)
    if colab is None:
        raise RuntimeError(f"upload_photos works in Colab only; elsewhere copy your photos into {folder}")
    uploaded = colab.files.upload()  # {file name: bytes}
    paths = save_photos(uploaded, folder)
    print(f"{len(paths)} file(s) in {folder}: {', '.join(p.name for p in paths)}")
    return paths


def offer_download(path: str | Path, seam: ColabSeam | None = None) -> Path:
    """Hand `path` to the browser as a download in Colab; elsewhere print where it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train an adapter first (the cell above)")
    colab = _colab(seam)
    if colab is None:
        print(f"your LoRA: {path.resolve()}")
    else:
        colab.files.download(str(path))
    return path
