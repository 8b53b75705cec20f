"""The training dataset: concept folders as items with caption, trigger-free caption and class prompt.

`ConceptDataset` validates every folder first (`catlab.data.concepts.validate_concept_folder`) and raises one error for all
of them. For CAT (arXiv 2404.07554) each item carries its caption with the trigger and without it, the latter being
the prompt on which the adapted model must keep agreeing with the frozen base model. Crops and flips are
deterministic in (seed, epoch, index), so a resumed run sees the same batches.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from catlab.config import ConceptConfig
from catlab.data.captions import DEFAULT_CAPTION, DEFAULT_CLASS_PROMPT, format_prompt, trigger_free_caption
from catlab.data.concepts import (
    ConceptDataError,
    ConceptDataWarning,
    bullet_list,
    check_tokens,
    convert_to_rgb,
    open_image,
    validate_concept_folder,
)
from catlab.tensors import pixels_to_unit_range


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is `size` px (LANCZOS: antialiased when shrinking)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)


def crop_and_flip(
    img: Image.Image, size: int, rng: np.random.Generator, center_crop: bool, random_flip: bool
) -> torch.Tensor:
    """A `size` x `size` crop as a float tensor (3, size, size) in [-1, 1]; random parts drawn from `rng`."""
    w, h = img.size
    # draw all random numbers every time, so that toggling one option does not change the other's choices
    dx, dy, flip = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1)), bool(rng.random() < 0.5)
    if center_crop:
        dx, dy = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((dx, dy, dx + size, dy + size)), dtype=np.float32)  # (size, size, 3)
    x = pixels_to_unit_range(arr)  # (3, size, size)
    return x.flip(-1) if random_flip and flip else x


def _checked_reports(concepts: list[ConceptConfig], resolution: int, tokenizer: Any, caption_template: str) -> list:
    """Every concept folder's report, a trigger shared by two concepts among the errors; raises ConceptDataError
    naming every problem of every folder at once."""
    reports = [
        validate_concept_folder(
            c.folder, c.trigger, c.class_word, resolution, tokenizer, caption_template, raise_errors=False
        )
        for c in concepts
    ]
    seen: dict[str, int] = {}
    for i, c in enumerate(concepts):
        if c.trigger.lower() in seen:
            reports[i].errors.append(
                f"trigger {c.trigger!r} is also the trigger of concept {seen[c.trigger.lower()]}. "
                "Fix: give each concept its own trigger"
            )
        seen.setdefault(c.trigger.lower(), i)
    bad = [r for r in reports if r.errors]
    if bad:
        problems = [e for r in bad for e in r.errors]
        sections = "\n".join(f"  {r.header()}:\n{bullet_list(r.errors, '    ')}" for r in bad)
        raise ConceptDataError(f"concept data has {len(problems)} problem(s):\n{sections}", problems)
    return reports


class ConceptDataset(torch.utils.data.Dataset):
    """Images of one or more concepts with captions, trigger-free captions and class prompts.

    Random crops and flips depend only on (seed, epoch, index): call `set_epoch(n)` at each epoch and a
    resumed run sees the same batches as an uninterrupted one. With DataLoader workers, keep
    persistent_workers=False so that the workers see the new epoch.
    """

    def __init__(
        self,
        concepts: list[ConceptConfig | dict],
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = True,
        trigger_free: str = "drop",
        seed: int = 0,
        tokenizer: Any = None,
        caption_template: str = DEFAULT_CAPTION,
        class_prompt_template: str = DEFAULT_CLASS_PROMPT,
    ):
        if trigger_free not in ("drop", "replace"):
            raise ValueError(
                f"trigger_free={trigger_free!r}: choose 'drop' (the trigger) or 'replace' (it by the class word)"
            )
        if not concepts:
            raise ValueError(
                "no concepts given. Fix: pass e.g. [ConceptConfig(folder='data/sks', trigger='sks', class_word='circle')]"
            )
        self.concepts = [
            c if isinstance(c, ConceptConfig) else _concept_from_dict(c, i) for i, c in enumerate(concepts)
        ]
        self.resolution, self.center_crop, self.random_flip, self.seed, self.epoch = (
            resolution,
            center_crop,
            random_flip,
            seed,
            0,
        )
        self.reports = _checked_reports(self.concepts, resolution, tokenizer, caption_template)
        self.records = [
            dict(
                path=path,
                caption=cap,
                trigger_free_caption=trigger_free_caption(cap, c.trigger, trigger_free, c.class_word),
                class_prompt=format_prompt(class_prompt_template, c.trigger, c.class_word),
                concept=i,
            )
            for i, (c, r) in enumerate(zip(self.concepts, self.reports))
            for path, cap in zip(r.images, r.captions)
        ]
        self._cache: dict[int, Image.Image] = {}  # resized once: only the crop and flip change between epochs

    def check_tokenizer(self, tokenizer: Any) -> None:
        """The checks that need the base model's tokenizer, for a dataset built before the model loaded: a warning
        (ConceptDataWarning) for a trigger it splits or does not know, and for captions it cuts."""
        for r in self.reports:
            known = len(r.warnings)
            check_tokens(r, tokenizer)
            for w in r.warnings[known:]:
                warnings.warn(f"{r.folder}: {w}", ConceptDataWarning, stacklevel=2)

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
        pixels = crop_and_flip(
            self._cache[index], self.resolution, rng, self.center_crop, self.random_flip
        )  # (3, R, R)
        return dict(
            pixel_values=pixels,
            caption=rec["caption"],
            trigger_free_caption=rec["trigger_free_caption"],
            class_prompt=rec["class_prompt"],
            concept=rec["concept"],
            path=str(rec["path"]),
        )

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
