"""Concept data: a folder of photos with captions, a trigger token and a class word, checked up front.

`validate_concept_folder` reads everything once and lists every problem in one error, so a notebook user
fixes a folder in one pass instead of meeting one crash per file. `ConceptDataset` turns one or more folders
into training items; for CAT (arXiv 2404.07554) each item carries its caption with the trigger and without
it, the latter being the prompt on which the adapted model must keep agreeing with the frozen base model.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import ConceptConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FILES = ("captions.txt", "captions.jsonl")
METADATA_FILES = ("concept.json",)  # written by export_concept; describes the folder, is not data
DEFAULT_CAPTION = "a {trigger} {class}"
DEFAULT_CLASS_PROMPT = "a {class}"
MODE_NAMES = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "P": "palette", "PA": "palette+alpha",
              "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale", "F": "float grayscale"}
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
    sources: list[str] = field(default_factory=list)  # where each caption came from: "x.txt", "captions.txt line 3", "default"
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
        lines = [self.header(), f"{len(self.images)} images, {len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.notes)} notes"]
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
            raise ConceptDataError(f"{self.header()} has {len(self.errors)} problem(s):\n" + _bullets(self.errors), list(self.errors))


def _bullets(items: list[str], indent: str = "  ") -> str:
    return "\n".join(f"{indent}- {x}" for x in items)


# ----------------------------------------------------------------------------- captions and triggers


def format_prompt(template: str, trigger: str, class_word: str) -> str:
    """Fill `{trigger}` and `{class}` (or `{class_word}`) in a caption template."""
    try:
        return template.format_map({"trigger": trigger, "class": class_word, "class_word": class_word})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"template {template!r} may only use {{trigger}} and {{class}} ({e!r})") from e


def _word_pattern(word: str) -> str:
    # lookarounds rather than \b: "sks" must not match inside "asks", and "<sks>" starts with a non-word character
    return rf"(?<!\w){re.escape(word)}(?!\w)"


def has_trigger(caption: str, trigger: str) -> bool:
    """Whether `trigger` occurs in `caption` as a whole word (case-insensitive, as CLIP lowercases)."""
    return re.search(_word_pattern(trigger), caption, flags=re.IGNORECASE) is not None


def _tidy(text: str) -> str:
    text = re.sub(r"\(\s*\)|\[\s*\]", " ", text)  # brackets the removal left empty
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip(" ,;:")


def remove_trigger(caption: str, trigger: str, mode: str = "remove", class_word: str | None = None) -> str:
    """The trigger-free caption for CAT.

    mode="remove" drops the trigger ("a sks circle" -> "a circle", the authors' choice); mode="class" puts the
    class word in its place unless the class word is already beside it ("sks on a rug" -> "circle on a rug").
    """
    if mode not in ("remove", "class"):
        raise ValueError(f"mode={mode!r}: choose 'remove' or 'class'")
    if mode == "class" and not class_word:
        raise ValueError("mode='class' needs class_word, e.g. remove_trigger(caption, 'sks', 'class', class_word='circle')")
    if not has_trigger(caption, trigger):
        return caption
    if mode == "remove":
        return _tidy(re.sub(_word_pattern(trigger), " ", caption, flags=re.IGNORECASE))
    cls = re.escape(class_word) + r"(?:e?s)?(?!\w)"  # the class word, singular or plural

    def replace(m: re.Match) -> str:
        # "beside" allows brackets and commas: "a circle (sks)" must not become "a circle (circle)"
        gap = r"[\s,()\[\]]*"
        beside = re.match(gap + cls, m.string[m.end():], re.I) or re.search(rf"(?<!\w){cls}{gap}$", m.string[:m.start()], re.I)
        return " " if beside else class_word

    return _tidy(re.sub(_word_pattern(trigger), replace, caption, flags=re.IGNORECASE))


def _read_text(path: Path, errors: list[str], where: str) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: Windows editors put a byte-order mark first
    except (OSError, UnicodeDecodeError) as e:
        errors.append(f"{where}: cannot be read as UTF-8 text ({e}). Fix: save it as UTF-8")
        return None


def _parse_caption_line(name: str, line: str, where: str, errors: list[str]) -> tuple[str, str] | None:
    if name.endswith(".jsonl"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row, why = None, f"not valid JSON ({e.msg})"
        else:
            why = "needs string fields 'file' and 'caption'"
        if isinstance(row, dict):
            file, caption = row.get("file", row.get("file_name")), row.get("caption", row.get("text"))
            if isinstance(file, str) and isinstance(caption, str):
                return file.strip(), caption
        errors.append(f'{where}: {why}. Fix: one object per line, e.g. {{"file": "img1.png", "caption": "a sks circle"}}')
        return None
    sep = "\t" if "\t" in line else "|" if "|" in line else None
    if sep is None:
        errors.append(f"{where}: expected 'filename<TAB>caption' or 'filename|caption', got {line!r}. Fix: add the separator")
        return None
    file, caption = line.split(sep, 1)
    return file.strip(), caption


def _read_caption_files(folder: Path, images: list[Path], errors: list[str]) -> dict[str, tuple[str, str]]:
    """Captions from captions.txt / captions.jsonl: image name -> (caption, source)."""
    present = [n for n in CAPTION_FILES if (folder / n).is_file()]
    if len(present) > 1:
        errors.append("captions.txt and captions.jsonl are both present. Fix: keep one, so that it is clear which captions are used")
    names = {p.name: p.name for p in images} | {p.stem: p.name for p in images}  # "img1.png" or just "img1"
    out: dict[str, tuple[str, str]] = {}
    for name in present:
        text = _read_text(folder / name, errors, name)
        for lineno, line in enumerate((text or "").splitlines(), 1):
            where = f"{name} line {lineno}"
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parsed = _parse_caption_line(name, line.strip(), where, errors)
            if parsed is None:
                continue
            file, caption = parsed
            if file not in names:
                errors.append(f"{where}: no image named {file!r} in the folder. Fix: correct the file name or delete the line")
            elif names[file] in out:
                errors.append(f"{where}: {file!r} already has a caption ({out[names[file]][1]}). Fix: keep one line per image")
            else:
                out[names[file]] = (" ".join(caption.split()), where)
    return out


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
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def load_images(folder: str | Path) -> list[Image.Image]:
    """All images in `folder` as RGB (reference images for metrics), sorted by file name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConceptDataError(f"{folder}: folder does not exist. Fix: check the path (cwd is {Path.cwd()})", [f"{folder}: missing"])
    images, problems = [], []
    for p in _list_images(folder):
        try:
            images.append(convert_to_rgb(open_image(p)))
        except Exception as e:  # PIL raises many types for bad files
            problems.append(f"{p.name}: cannot be read as an image ({e}). Fix: re-save it as PNG or JPEG, or remove it")
    if not images and not problems:
        problems.append(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found. Fix: put the reference images in this folder")
    if problems:
        raise ConceptDataError(f"reference images in {folder} have {len(problems)} problem(s):\n" + _bullets(problems), problems)
    return images


# ----------------------------------------------------------------------------- validation


def _check_tokens(report: ConceptReport, tokenizer: Any) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    for role, word in (("trigger", report.trigger), ("class word", report.class_word)):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        if unk is not None and unk in ids:
            harm = ("the adapter would bind the concept to every unknown word" if role == "trigger"
                    else "the base model does not know the class, so class prompts mean nothing")
            fix = SINGLE_TOKEN_ADVICE if role == "trigger" else "use a class word the base model knows"
            report.warnings.append(f"{role} {word!r} becomes the unknown token {tokenizer.unk_token!r} ({pieces}): {harm}. Fix: {fix}")
        elif role == "trigger" and len(ids) > 1:
            report.warnings.append(f"trigger {word!r} splits into {len(ids)} tokens {pieces}, which other words share, so training "
                                   f"also shifts them. Fix: {SINGLE_TOKEN_ADVICE}")
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10_000:  # transformers uses a huge sentinel for "no limit"
        long = [f"{p.name} ({n} tokens)" for p, c in zip(report.images, report.captions) if (n := len(tokenizer(c)["input_ids"])) > limit]
        if long:
            report.warnings.append(f"captions longer than the text encoder's {limit} tokens are cut: {', '.join(long)}. Fix: shorten them")


def _inspect(report: ConceptReport, path: Path, caption: tuple[str, str] | None, template: str) -> None:
    """Check one image and its caption; append it to the report if usable, else its problems to the errors."""
    n_errors, res = len(report.errors), report.resolution
    try:
        img = open_image(path)
    except Exception as e:  # PIL raises many types for bad files
        report.errors.append(f"{path.name}: cannot be read as an image ({type(e).__name__}: {e}). Fix: re-save it as PNG or JPEG, or remove it")
        return
    if min(img.size) < res:
        report.errors.append(f"{path.name}: {img.width}x{img.height} px is smaller than the training resolution {res} px (the shorter "
                             f"side must be >= {res}). Fix: use larger images or lower `resolution`")
    if img.mode != "RGB":
        name = MODE_NAMES.get(img.mode, img.mode)
        report.notes.append(f"{path.name}: {name if name == img.mode else f'{name} ({img.mode})'} image is converted to RGB"
                            + (" (transparent pixels become white)" if "A" in img.mode or "transparency" in img.info else ""))
    if caption is None or not caption[0]:
        if caption is not None:
            report.notes.append(f"{caption[1]}: caption is empty; the default caption is used")
        caption = (format_prompt(template, report.trigger, report.class_word), "default")
    if not has_trigger(caption[0], report.trigger):
        example = format_prompt(DEFAULT_CAPTION, report.trigger, report.class_word)
        report.errors.append(f"{caption[1]}: caption {caption[0]!r} (for {path.name}) does not contain the trigger {report.trigger!r}. "
                             f"Fix: add the trigger, e.g. {example!r}")
    if len(report.errors) == n_errors:
        report.images.append(path)
        report.captions.append(caption[0])
        report.sources.append(caption[1])
        report.sizes.append(img.size)
        report.modes.append(img.mode)


def validate_concept_folder(folder: str | Path, trigger: str, class_word: str, resolution: int, tokenizer: Any = None,
                            caption_template: str = DEFAULT_CAPTION, raise_errors: bool = True) -> ConceptReport:
    """Check a concept folder and return what will be trained on.

    Raises ConceptDataError listing every problem (unless raise_errors=False: then they are in `report.errors`).
    With a tokenizer, a trigger it does not keep as one known token gives a ConceptDataWarning.
    """
    folder = Path(folder).expanduser()
    report = ConceptReport(folder, trigger, class_word, resolution)
    errors = report.errors
    if not trigger.strip() or not class_word.strip():
        errors.append(f"trigger={trigger!r}, class_word={class_word!r}: both must be non-empty. Fix: e.g. trigger='sks', class_word='circle'")
    if resolution < 1:
        errors.append(f"resolution={resolution}: must be a positive number of pixels, e.g. 512")
    if not folder.exists():
        errors.append(f"{folder}: folder does not exist (cwd is {Path.cwd()}). Fix: check the path, or write a toy concept "
                      "with `catlab toyworld export-concept two_tone_circle --out <folder>`")
    elif not folder.is_dir():
        errors.append(f"{folder}: is a file, not a folder. Fix: pass the folder that holds the images")
    elif not errors:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))  # hidden: .DS_Store, .ipynb_checkpoints
        images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        from_files = _read_caption_files(folder, images, errors)
        stems = {p.stem for p in images}
        ignored = [p for p in entries if p not in images and p.name not in CAPTION_FILES + METADATA_FILES
                   and not (p.suffix.lower() == ".txt" and p.stem in stems)]
        for path in images:
            txt = path.with_suffix(".txt")
            caption = from_files.get(path.name)
            if txt.is_file() and (text := _read_text(txt, errors, txt.name)) is not None:
                if caption is not None:
                    report.notes.append(f"{txt.name} overrides the caption in {caption[1]}")
                caption = (" ".join(text.split()), txt.name)
            _inspect(report, path, caption, caption_template)
        listing = ", ".join(p.name + ("/" if p.is_dir() else "") for p in ignored)
        if not entries:
            errors.append(f"{folder}: folder is empty. Fix: add a few photos of the concept (PNG or JPEG) with captions that contain "
                          f"the trigger, e.g. img1.png + img1.txt holding {format_prompt(DEFAULT_CAPTION, trigger, class_word)!r}")
        elif not report.images:
            found = f"; it holds only files that are not images: {listing}" if ignored else ""
            errors.append(f"{folder}: no usable images{found}. Fix: add images ({', '.join(IMAGE_EXTENSIONS)})")
        elif ignored:
            report.notes.append(f"ignored (not images, captions or concept.json): {listing}")
    if tokenizer is not None and trigger.strip() and class_word.strip():
        _check_tokens(report, tokenizer)
    for w in report.warnings:
        warnings.warn(f"{folder}: {w}", ConceptDataWarning, stacklevel=2)
    if raise_errors:
        report.raise_if_errors()
    return report


# ----------------------------------------------------------------------------- dataset


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is `size` px (LANCZOS: antialiased when shrinking)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)


def crop_and_flip(img: Image.Image, size: int, rng: np.random.Generator, center_crop: bool, random_flip: bool) -> torch.Tensor:
    """A `size` x `size` crop as a float tensor (3, size, size) in [-1, 1]; random parts drawn from `rng`."""
    w, h = img.size
    # draw all random numbers every time, so that toggling one option does not change the other's choices
    dx, dy, flip = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1)), bool(rng.random() < 0.5)
    if center_crop:
        dx, dy = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((dx, dy, dx + size, dy + size)), dtype=np.float32)  # (size, size, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0  # (3, size, size)
    return x.flip(-1) if random_flip and flip else x


class ConceptDataset(torch.utils.data.Dataset):
    """Images of one or more concepts with captions, trigger-free captions and class prompts.

    Random crops and flips depend only on (seed, epoch, index): call `set_epoch(n)` at each epoch and a
    resumed run sees the same batches as an uninterrupted one. With DataLoader workers, keep
    persistent_workers=False so that the workers see the new epoch.
    """

    def __init__(self, concepts: list[ConceptConfig | dict], resolution: int, center_crop: bool = False, random_flip: bool = True,
                 cat_prompt: str = "remove", seed: int = 0, tokenizer: Any = None, caption_template: str = DEFAULT_CAPTION,
                 class_prompt_template: str = DEFAULT_CLASS_PROMPT):
        if cat_prompt not in ("remove", "class"):
            raise ValueError(f"cat_prompt={cat_prompt!r}: choose 'remove' or 'class'")
        if not concepts:
            raise ValueError("no concepts given. Fix: pass e.g. [ConceptConfig(folder='data/sks', trigger='sks', class_word='circle')]")
        self.concepts = [c if isinstance(c, ConceptConfig) else _concept_from_dict(c, i) for i, c in enumerate(concepts)]
        self.resolution, self.center_crop, self.random_flip, self.seed, self.epoch = resolution, center_crop, random_flip, seed, 0
        self.reports = [validate_concept_folder(c.folder, c.trigger, c.class_word, resolution, tokenizer, caption_template, raise_errors=False)
                        for c in self.concepts]
        seen: dict[str, int] = {}
        for i, c in enumerate(self.concepts):
            if c.trigger.lower() in seen:
                self.reports[i].errors.append(f"trigger {c.trigger!r} is also the trigger of concept {seen[c.trigger.lower()]}. "
                                              "Fix: give each concept its own trigger")
            seen.setdefault(c.trigger.lower(), i)
        bad = [r for r in self.reports if r.errors]
        if bad:
            problems = [e for r in bad for e in r.errors]
            sections = "\n".join(f"  {r.header()}:\n{_bullets(r.errors, '    ')}" for r in bad)
            raise ConceptDataError(f"concept data has {len(problems)} problem(s):\n{sections}", problems)
        self.records = [dict(path=path, caption=cap, caption_free=remove_trigger(cap, c.trigger, cat_prompt, c.class_word),
                             class_prompt=format_prompt(class_prompt_template, c.trigger, c.class_word), concept=i)
                        for i, (c, r) in enumerate(zip(self.concepts, self.reports)) for path, cap in zip(r.images, r.captions)]
        self._cache: dict[int, Image.Image] = {}  # resized once: only the crop and flip change between epochs

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops/flips of epoch `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        if index not in self._cache:
            self._cache[index] = resize_shorter_side(convert_to_rgb(open_image(rec["path"])), self.resolution)
        rng = np.random.default_rng([self.seed, self.epoch, index])  # independent of call order and worker
        pixels = crop_and_flip(self._cache[index], self.resolution, rng, self.center_crop, self.random_flip)  # (3, R, R)
        return dict(pixel_values=pixels, caption=rec["caption"], caption_free=rec["caption_free"],
                    class_prompt=rec["class_prompt"], concept=rec["concept"], path=str(rec["path"]))

    def summary(self) -> str:
        """Every concept's report, for notebooks."""
        return "\n\n".join(r.summary() for r in self.reports)


def _concept_from_dict(d: dict, i: int) -> ConceptConfig:
    try:
        return ConceptConfig(**d)
    except TypeError as e:
        raise ValueError(f"concept {i}: {d!r} needs exactly the keys folder, trigger, class_word ({e})") from e


def collate_concept_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixel_values to (B, 3, R, R) and concept to (B,); keep the strings as lists."""
    batch: dict[str, Any] = {k: [it[k] for it in items] for k in items[0]}
    batch["pixel_values"] = torch.stack(batch["pixel_values"])  # (B, 3, R, R)
    batch["concept"] = torch.tensor(batch["concept"], dtype=torch.long)  # (B,)
    return batch
