"""Concept data in a notebook: `save_uploads` for a FileUpload's files, `CaptionEditor` (caption boxes beside thumbnails,
with trigger and class-word boxes), `report_html` for a ConceptReport, and `write_concept_folder` to export a
validated concept (images, one caption each, concept.json).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from catlab.files import write_json_atomic, write_text_atomic
from catlab.widgets.figures import pil_png


def save_photos(named: Mapping[str, bytes], folder: str | Path) -> list[Path]:
    """Write uploaded files (name -> bytes) into `folder`, atomically; a file already there with the same content is
    kept, one with other content is never overwritten (rename the upload or remove the old file)."""
    from catlab.files import replace_atomically

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for raw_name, content in named.items():
        path = folder / Path(str(raw_name)).name  # never a path from the browser
        content = bytes(content)
        if path.exists() and path.read_bytes() != content:
            raise FileExistsError(f"{path} already holds another file; rename the upload, or remove {path.name} first")
        if not path.exists():
            replace_atomically(path, lambda tmp, data=content: tmp.write_bytes(data))
        paths.append(path)
    return paths


def save_uploads(uploaded: Any, folder: str | Path) -> list[Path]:
    """Write the files of a FileUpload's `.value` into `folder` (`save_photos`): ipywidgets 8 gives a tuple of dicts
    with name and content, ipywidgets 7 (Colab's) a dict of name -> {"content": ...}."""
    if isinstance(uploaded, Mapping):
        named = {name: item["content"] for name, item in uploaded.items()}
    else:
        named = {item["name"]: item["content"] for item in uploaded or ()}
    return save_photos(named, folder)


def _replace_word(text: str, old: str, new: str) -> str:
    if not old or old == new:
        return text
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, text, flags=re.IGNORECASE)


class CaptionEditor:
    """Caption text boxes beside thumbnails of a folder's images, with trigger and class-word boxes above.

    Changing the trigger (or class word) box rewrites that word in every caption. `save()` writes one
    `<image>.txt` per image; nothing is written until it is called (or its button is clicked).
    """

    def __init__(self, folder: str | Path, trigger: str, class_word: str, thumb: int = 64):
        import ipywidgets as w

        from catlab.data.concepts import DEFAULT_CAPTION, IMAGE_EXTENSIONS, format_prompt

        self.folder = Path(folder)
        self.images = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        style = {"description_width": "90px"}
        self.trigger_box = w.Text(value=trigger, description="trigger", style=style)
        self.class_box = w.Text(value=class_word, description="class word", style=style)
        self.caption_boxes: dict[str, Any] = {}
        rows = []
        for p in self.images:
            txt = p.with_suffix(".txt")
            caption = (
                " ".join(txt.read_text().split())
                if txt.is_file()
                else format_prompt(DEFAULT_CAPTION, trigger, class_word)
            )
            box = w.Text(value=caption, layout=w.Layout(width="360px"))
            self.caption_boxes[p.name] = box
            try:
                with Image.open(p) as im:
                    preview = im.convert("RGB").resize((thumb, thumb), Image.NEAREST)
                view: Any = w.Image(value=pil_png(preview), format="png", width=thumb, height=thumb)
            except OSError:
                view = w.HTML("<i>unreadable</i>")
            rows.append(w.HBox([view, w.VBox([w.HTML(f"<code>{p.name}</code>"), box])]))
        self.trigger_box.observe(self._rename("trigger"), names="value")
        self.class_box.observe(self._rename("class"), names="value")
        save = w.Button(description="Save captions", button_style="primary")
        self.status = w.HTML()
        save.on_click(lambda _: self.save())
        self.widget = w.VBox([w.HBox([self.trigger_box, self.class_box]), *rows, w.HBox([save, self.status])])

    def _rename(self, _what: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            for box in self.caption_boxes.values():
                box.value = _replace_word(box.value, change["old"], change["new"])

        return handler

    @property
    def trigger(self) -> str:
        return self.trigger_box.value.strip()

    @property
    def class_word(self) -> str:
        return self.class_box.value.strip()

    @property
    def captions(self) -> dict[str, str]:
        """Image file name -> caption, as currently typed."""
        return {name: " ".join(box.value.split()) for name, box in self.caption_boxes.items()}

    def save(self) -> list[Path]:
        """Write every caption to `<image stem>.txt` beside its image."""
        written = []
        for p in self.images:
            txt = p.with_suffix(".txt")
            write_text_atomic(txt, self.captions[p.name] + "\n")
            written.append(txt)
        self.status.value = f"saved {len(written)} captions"
        return written

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def report_html(report: Any) -> str:
    """A ConceptReport as HTML: a green / red headline, then errors, warnings and notes."""
    from html import escape

    ok = not report.errors
    colour = "#1a7f37" if ok else "#cf222e"
    head = (
        f"ready to train: {len(report.images)} images"
        if ok
        else f"{len(report.errors)} problem(s) to fix before training"
    )
    parts = [
        f"<div style='border-left:4px solid {colour};padding:4px 10px'><b style='color:{colour}'>{escape(head)}</b>"
        f"<br><small>{escape(report.header())}</small>"
    ]
    for title, items in (("errors", report.errors), ("warnings", report.warnings), ("notes", report.notes)):
        if items:
            parts.append(f"<br><b>{title}</b><ul>" + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>")
    return "".join(parts) + "</div>"


def write_concept_folder(report: Any, out_dir: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Copy a validated report's images with one `.txt` caption each (and a concept.json) into `out_dir`."""
    report.raise_if_errors()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True or choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for img, caption in zip(report.images, report.captions):
        shutil.copy2(img, out / img.name)
        write_text_atomic((out / img.name).with_suffix(".txt"), caption + "\n")
    meta = {"trigger": report.trigger, "class_word": report.class_word, "source": str(report.folder)}
    if name:
        meta["name"] = name
    write_json_atomic(out / "concept.json", meta)
    return out
