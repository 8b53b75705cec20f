"""Writing files so that an interruption never leaves a half-written one: write a sibling `.tmp`, then rename it over
the target (a rename within one folder is atomic on POSIX and Windows). Every atomic write in catlab goes through here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def replace_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a temporary sibling of `path`, then move it into place; returns `path`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(p)
    finally:
        if tmp.exists():  # write() failed: leave no debris behind
            tmp.unlink()
    return p


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Indented JSON with a final newline; values JSON cannot hold (paths, numpy scalars) are written as strings."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv_atomic(path: str | Path, table) -> Path:
    """A pandas DataFrame as CSV, without its index."""
    return replace_atomically(path, lambda tmp: table.to_csv(tmp, index=False))


def save_image_atomic(img, path: str | Path) -> Path:
    """A PIL image as PNG (RGB, or as it is when it has an alpha channel)."""
    return replace_atomically(path, lambda tmp: img.save(tmp, format="PNG"))


def replace_folder_atomically(final: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a temporary folder, which then replaces `final`: a crash never leaves half a checkpoint."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    return final
