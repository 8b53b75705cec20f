"""Concept data: a folder of photos with captions, a trigger token and a class word, checked up front.

`validate_concept_folder` reads everything once and lists every problem in one error, so a notebook user
fixes a folder in one pass instead of meeting one crash per file. Caption text lives in `catlab.data.captions`;
`catlab.data.dataset.ConceptDataset` turns checked folders into training items.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from catlab.data.captions import (
    CAPTION_FILES,
    DEFAULT_CAPTION,
    format_prompt,
    has_trigger,
    read_caption_files,
    read_text_file,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILES = ("concept.json",)  # written by export_concept; describes the folder, is not data
MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "1": "1-bit",
    "P": "palette",
    "PA": "palette+alpha",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale",
    "I": "32-bit grayscale",
    "F": "float grayscale",
}
SINGLE_TOKEN_ADVICE = "a rare word that the tokenizer keeps as one known token is best (e.g. 'sks')"


class ConceptDataError(ValueError):
    """Everything wrong with the concept data at once; `.problems` lists them one by one."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class ConceptDataWarning(UserWarning):
    """Trains, but probably not as intended (e.g. a trigger the tokenizer does not know)."""


@dataclass
class ConceptReport:
    """What `validate_concept_folder` found: usable images with their captions, plus notes, warnings and errors."""

    folder: Path
    trigger: str
    class_word: str
    resolution: int
    images: list[Path] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    sources: list[str] = field(
        default_factory=list
    )  # where each caption came from: "x.txt", "captions.txt line 3", "default"
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def header(self) -> str:
        return f"concept folder {self.folder} (trigger {self.trigger!r}, class {self.class_word!r}, resolution {self.resolution})"

    def summary(self) -> str:
        """A plain-text table for notebooks: one row per image, then notes, warnings and errors."""
        lines = [
            self.header(),
            f"{len(self.images)} images, {len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.notes)} notes",
        ]
        if self.images:
            w, wc = max(len(p.name) for p in self.images), max(len(c) for c in self.captions)
            lines.append(f"  {'file':{w}s}  {'size':>9s}  {'mode':4s}  {'caption':{wc}s}  from")
            for p, (iw, ih), mode, cap, src in zip(self.images, self.sizes, self.modes, self.captions, self.sources):
                lines.append(f"  {p.name:{w}s}  {f'{iw}x{ih}':>9s}  {mode:4s}  {cap:{wc}s}  {src}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings), ("notes", self.notes)):
            if items:
                lines += [f"{title}:"] + [f"  - {x}" for x in items]
        return "\n".join(lines)

    __str__ = summary

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConceptDataError(
                f"{self.header()} has {len(self.errors)} problem(s):\n" + bullet_list(self.errors), list(self.errors)
            )


def bullet_list(items: list[str], indent: str = "  ") -> str:
    """Problems as an indented "- " list, the form every concept-data error uses."""
    return "\n".join(f"{indent}- {x}" for x in items)


def read_concept_metadata(folder: str | Path) -> dict:
    """The folder's concept.json (trigger, class word, name, source), or {} when it has none."""
    f = Path(folder) / METADATA_FILES[0]
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConceptDataError(
            f"{f}: not valid JSON ({e}). Fix: repair it, or delete it and pass trigger and class word", [str(e)]
        ) from e
    if not isinstance(meta, dict):
        raise ConceptDataError(f"{f}: expected a JSON object with trigger and class_word", [f"{f} is not an object"])
    return meta


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a concept folder (IMAGE_EXTENSIONS, hidden files skipped), sorted by name."""
    return _list_images(Path(folder))


# ----------------------------------------------------------------------------- images


def convert_to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of any PIL image; transparent pixels become white (plain convert would turn them black or garbage)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Fully decoded image, upright (phone photos store rotation in EXIF), in its original mode."""
    with Image.open(path) as im:
        im.verify()  # catches truncated / corrupt files early; the image object is unusable afterwards
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im)  # returns a copy, so closing the file is safe


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def load_images(folder: str | Path) -> list[Image.Image]:
    """All images in `folder` as RGB (reference images for metrics), sorted by file name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConceptDataError(
            f"{folder}: folder does not exist. Fix: check the path (cwd is {Path.cwd()})", [f"{folder}: missing"]
        )
    images, problems = [], []
    for p in _list_images(folder):
        try:
            images.append(convert_to_rgb(open_image(p)))
        except Exception as e:  # PIL raises many types for bad files
            problems.append(f"{p.name}: cannot be read as an image ({e}). Fix: re-save it as PNG or JPEG, or remove it")
    if not images and not problems:
        problems.append(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found. Fix: put the reference images in this folder"
        )
    if problems:
        raise ConceptDataError(
            f"reference images in {folder} have {len(problems)} problem(s):\n" + bullet_list(problems), problems
        )
    return images


# ----------------------------------------------------------------------------- validation


def check_tokens(report: ConceptReport, tokenizer: Any) -> None:
    """Add warnings for a trigger or class word the tokenizer splits or does not know, and for captions it cuts."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for role, word in (("trigger", report.trigger), ("class word", report.class_word)):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        if unk is not None and unk in ids:
            harm = (
                "the adapter would bind the concept to every unknown word"
                if role == "trigger"
                else "the base model does not know the class, so class prompts mean nothing"
            )
            fix = SINGLE_TOKEN_ADVICE if role == "trigger" else "use a class word the base model knows"
            report.warnings.append(
                f"{role} {word!r} becomes the unknown token {tokenizer.unk_token!r} ({pieces}): {harm}. Fix: {fix}"
            )
        elif role == "trigger" and len(ids) > 1:
            report.warnings.append(
                f"trigger {word!r} splits into {len(ids)} tokens {pieces}, which other words share, so training "
                f"also shifts them. Fix: {SINGLE_TOKEN_ADVICE}"
            )
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10_000:  # transformers uses a huge sentinel for "no limit"
        long = [
            f"{p.name} ({n} tokens)"
            for p, c in zip(report.images, report.captions)
            if (n := len(tokenizer(c)["input_ids"])) > limit
        ]
        if long:
            report.warnings.append(
                f"captions longer than the text encoder's {limit} tokens are cut: {', '.join(long)}. Fix: shorten them"
            )


def _inspect(report: ConceptReport, path: Path, caption: tuple[str, str] | None, template: str) -> None:
    """Check one image and its caption; append it to the report if usable, else its problems to the errors."""
    n_errors, res = len(report.errors), report.resolution
    try:
        img = open_image(path)
    except Exception as e:  # PIL raises many types for bad files
        report.errors.append(
            f"{path.name}: cannot be read as an image ({type(e).__name__}: {e}). Fix: re-save it as PNG or JPEG, or remove it"
        )
        return
    if min(img.size) < res:  # upscaled, as diffusers' and kohya's trainers do; softer than a photo of the full size
        report.notes.append(
            f"{path.name}: {img.width}x{img.height} px is upscaled to the training resolution {res} px (shorter side); "
            "larger images train sharper"
        )
    if img.mode != "RGB":
        name = MODE_NAMES.get(img.mode, img.mode)
        report.notes.append(
            f"{path.name}: {name if name == img.mode else f'{name} ({img.mode})'} image is converted to RGB"
            + (" (transparent pixels become white)" if "A" in img.mode or "transparency" in img.info else "")
        )
    if caption is None or not caption[0]:
        if caption is not None:
            report.notes.append(f"{caption[1]}: caption is empty; the default caption is used")
        caption = (format_prompt(template, report.trigger, report.class_word), "default")
    if not has_trigger(caption[0], report.trigger):
        example = format_prompt(DEFAULT_CAPTION, report.trigger, report.class_word)
        report.errors.append(
            f"{caption[1]}: caption {caption[0]!r} (for {path.name}) does not contain the trigger {report.trigger!r}. "
            f"Fix: add the trigger, e.g. {example!r}"
        )
    if len(report.errors) == n_errors:
        report.images.append(path)
        report.captions.append(caption[0])
        report.sources.append(caption[1])
        report.sizes.append(img.size)
        report.modes.append(img.mode)


def _inspect_folder(report: ConceptReport, folder: Path, caption_template: str) -> None:
    """Every image of an existing folder with its caption (per-image .txt over captions.txt / .jsonl), into `report`."""
    errors, trigger, class_word = report.errors, report.trigger, report.class_word
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))  # hidden: .DS_Store, .ipynb_checkpoints
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    from_files = read_caption_files(folder, images, errors)
    stems = {p.stem for p in images}
    ignored = [
        p
        for p in entries
        if p not in images
        and p.name not in CAPTION_FILES + METADATA_FILES
        and not (p.suffix.lower() == ".txt" and p.stem in stems)
    ]
    for path in images:
        txt = path.with_suffix(".txt")
        caption = from_files.get(path.name)
        if txt.is_file() and (text := read_text_file(txt, errors, txt.name)) is not None:
            if caption is not None:
                report.notes.append(f"{txt.name} overrides the caption in {caption[1]}")
            caption = (" ".join(text.split()), txt.name)
        _inspect(report, path, caption, caption_template)
    listing = ", ".join(p.name + ("/" if p.is_dir() else "") for p in ignored)
    if not entries:
        errors.append(
            f"{folder}: folder is empty. Fix: add a few photos of the concept (PNG or JPEG) with captions that contain "
            f"the trigger, e.g. img1.png + img1.txt holding {format_prompt(DEFAULT_CAPTION, trigger, class_word)!r}"
        )
    elif not report.images:
        found = f"; it holds only files that are not images: {listing}" if ignored else ""
        errors.append(f"{folder}: no usable images{found}. Fix: add images ({', '.join(IMAGE_EXTENSIONS)})")
    elif ignored:
        report.notes.append(f"ignored (not images, captions or concept.json): {listing}")


def validate_concept_folder(
    folder: str | Path,
    trigger: str,
    class_word: str,
    resolution: int,
    tokenizer: Any = None,
    caption_template: str = DEFAULT_CAPTION,
    raise_errors: bool = True,
) -> ConceptReport:
    """Check a concept folder and return what will be trained on.

    Raises ConceptDataError listing every problem (unless raise_errors=False: then they are in `report.errors`).
    With a tokenizer, a trigger it does not keep as one known token gives a ConceptDataWarning.
    """
    folder = Path(folder).expanduser()
    report = ConceptReport(folder, trigger, class_word, resolution)
    errors = report.errors
    if not trigger.strip() or not class_word.strip():
        errors.append(
            f"trigger={trigger!r}, class_word={class_word!r}: both must be non-empty. Fix: e.g. trigger='sks', class_word='circle'"
        )
    if resolution < 1:
        errors.append(f"resolution={resolution}: must be a positive number of pixels, e.g. 512")
    if not folder.exists():
        errors.append(
            f"{folder}: folder does not exist (cwd is {Path.cwd()}). Fix: check the path, or write a toy concept "
            "with `catlab toyworld export-concept two_tone_circle --out <folder>`"
        )
    elif not folder.is_dir():
        errors.append(f"{folder}: is a file, not a folder. Fix: pass the folder that holds the images")
    elif not errors:
        _inspect_folder(report, folder, caption_template)
    if tokenizer is not None and trigger.strip() and class_word.strip():
        check_tokens(report, tokenizer)
    for w in report.warnings:
        warnings.warn(f"{folder}: {w}", ConceptDataWarning, stacklevel=2)
    if raise_errors:
        report.raise_if_errors()
    return report
