"""Caption and prompt text: templates with `{trigger}` and `{class}`, the trigger-free caption for CAT, caption files.

Captions come from a per-image `x.txt`, from one `captions.txt` (`file<TAB>caption` or `file|caption`) or
`captions.jsonl` (`{"file": ..., "caption": ...}`), else from a template. Readers append every problem to an
`errors` list instead of raising, so that `catlab.data.concepts.validate_concept_folder` can report a whole folder at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CAPTION_FILES = ("captions.txt", "captions.jsonl")
DEFAULT_CAPTION = "a {trigger} {class}"
DEFAULT_CLASS_PROMPT = "a {class}"


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


def trigger_free_caption(caption: str, trigger: str, how: str = "drop", class_word: str | None = None) -> str:
    """The caption without its trigger: CAT's c_free.

    how="drop" drops the trigger ("a sks circle" -> "a circle", the authors' choice); how="replace" puts the class
    word in its place unless the class word is already beside it ("sks on a rug" -> "circle on a rug").
    """
    if how not in ("drop", "replace"):
        raise ValueError(f"how={how!r}: choose 'drop' or 'replace'")
    if how == "replace" and not class_word:
        raise ValueError(
            "how='replace' needs class_word, e.g. trigger_free_caption(caption, 'sks', 'replace', class_word='circle')"
        )
    if not has_trigger(caption, trigger):
        return caption
    if how == "drop":
        return _tidy(re.sub(_word_pattern(trigger), " ", caption, flags=re.IGNORECASE))
    cls = re.escape(class_word) + r"(?:e?s)?(?!\w)"  # the class word, singular or plural

    def replace(m: re.Match) -> str:
        # "beside" allows brackets and commas: "a circle (sks)" must not become "a circle (circle)"
        gap = r"[\s,()\[\]]*"
        beside = re.match(gap + cls, m.string[m.end() :], re.I) or re.search(
            rf"(?<!\w){cls}{gap}$", m.string[: m.start()], re.I
        )
        return " " if beside else class_word

    return _tidy(re.sub(_word_pattern(trigger), replace, caption, flags=re.IGNORECASE))


def read_text_file(path: Path, errors: list[str], where: str) -> str | None:
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
        errors.append(
            f'{where}: {why}. Fix: one object per line, e.g. {{"file": "img1.png", "caption": "a sks circle"}}'
        )
        return None
    sep = "\t" if "\t" in line else "|" if "|" in line else None
    if sep is None:
        errors.append(
            f"{where}: expected 'filename<TAB>caption' or 'filename|caption', got {line!r}. Fix: add the separator"
        )
        return None
    file, caption = line.split(sep, 1)
    return file.strip(), caption


def read_caption_files(folder: Path, images: list[Path], errors: list[str]) -> dict[str, tuple[str, str]]:
    """Captions from captions.txt / captions.jsonl: image name -> (caption, source)."""
    present = [n for n in CAPTION_FILES if (folder / n).is_file()]
    if len(present) > 1:
        errors.append(
            "captions.txt and captions.jsonl are both present. Fix: keep one, so that it is clear which captions are used"
        )
    names = {p.name: p.name for p in images} | {p.stem: p.name for p in images}  # "img1.png" or just "img1"
    out: dict[str, tuple[str, str]] = {}
    for name in present:
        text = read_text_file(folder / name, errors, name)
        for lineno, line in enumerate((text or "").splitlines(), 1):
            where = f"{name} line {lineno}"
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parsed = _parse_caption_line(name, line.strip(), where, errors)
            if parsed is None:
                continue
            file, caption = parsed
            if file not in names:
                errors.append(
                    f"{where}: no image named {file!r} in the folder. Fix: correct the file name or delete the line"
                )
            elif names[file] in out:
                errors.append(
                    f"{where}: {file!r} already has a caption ({out[names[file]][1]}). Fix: keep one line per image"
                )
            else:
                out[names[file]] = (" ".join(caption.split()), where)
    return out
