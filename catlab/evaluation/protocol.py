"""`evaluate`: generate with the base model and each adapter on the same prompts x seeds, embed, score, summarise.

`catlab.evaluation.images` draws and caches the images; `catlab.evaluation.scoring` turns them into a tidy table of
scores, which are pure functions in `catlab.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from PIL import Image

from catlab.data.concepts import IMAGE_EXTENSIONS, list_images, read_concept_metadata
from catlab.evaluation.images import (  # noqa: F401  (DEFAULT_TEMPLATES, expand_templates: part of evaluate's vocabulary)
    DEFAULT_TEMPLATES,
    EvalSampling,
    Sampler,
    base_id,
    draw_in_workers,
    draw_missing,
    expand_templates,
    methods_to_draw,
    model_images,
)
from catlab.evaluation.scoring import BASE, Concept, Scorers, score_images
from catlab.evaluation.summary import summarise
from catlab.files import write_csv_atomic, write_json_atomic


class EvalResult(NamedTuple):
    per_image: pd.DataFrame  # one row per method x prompt x seed
    summary: pd.DataFrame  # one row per method: {score}_mean, {score}_ci95


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def load_concept(concept: Any, trigger: str | None = None, class_word: str | None = None) -> Concept:
    """A Concept from a toy concept name, a folder of reference images (with optional concept.json) or a list of PIL images."""
    from catlab.toyworld.world import CONCEPTS, ToyConcept, concept_images

    if isinstance(concept, Concept):
        return concept
    name, meta = None, {}
    if isinstance(concept, str) and concept in CONCEPTS:
        concept = CONCEPTS[concept]
    if isinstance(concept, ToyConcept):
        refs, name = concept_images(concept)[0], concept.name
        meta = {"trigger": concept.trigger, "class_word": concept.class_word}
    elif isinstance(concept, (str, Path)):
        folder = Path(concept).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"concept {concept!s}: no such folder; pass a folder of reference images, "
                f"a toy concept name ({', '.join(CONCEPTS)}) or a list of PIL images"
            )
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"concept folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
        refs = [_open_rgb(f) for f in files]
        meta = read_concept_metadata(folder)  # written by `catlab toyworld export-concept` and the concept editor
        name = meta.get("name")
    else:
        refs = list(concept or [])
        if not refs or not all(isinstance(im, Image.Image) for im in refs):
            raise TypeError("concept: expected a toy concept name, a folder, or a non-empty list of PIL images")
        refs = [im.convert("RGB") for im in refs]
    trigger, class_word = trigger or meta.get("trigger"), class_word or meta.get("class_word")
    if not trigger or not class_word:
        raise ValueError(
            "concept: a trigger and a class word are needed; pass trigger='sks', class_word='circle' "
            "(or use a toy concept name, or a folder with a concept.json)"
        )
    if name is None:  # a user folder of a toy concept still gets oracle collapse scores
        name = next((c.name for c in CONCEPTS.values() if (c.trigger, c.class_word) == (trigger, class_word)), None)
    return Concept(trigger, class_word, refs, name)


def evaluate(
    base: Any = "toyworld",
    adapters: Mapping[str, str | Path | None] | None = None,
    concept: Any = None,
    *,
    sampling: EvalSampling | None = None,
    scorers: Scorers | None = None,
    out_dir: str | Path = "runs/eval",
    device: str | None = None,
    sampler: Sampler | None = None,
    progress: bool = True,
) -> EvalResult:
    """Generate with the base model and each adapter on the same prompts x seeds, embed, score and summarise.

    base: a pipeline or 'toyworld' / folder / hub id. adapters: method name -> adapter path, or None for the base
    model itself. concept: a `Concept` (`load_concept(folder, trigger, class_word)`), a toy concept name, or a folder
    with a concept.json. sampling: the templates, seeds and sampler settings (`EvalSampling`); scorers: the embedder,
    the oracle and DreamBooth's DINO / CLIP backbones (`Scorers`, docs/metrics.md). Images are cached as PNGs under
    out_dir/images, so a second call only re-scores. Writes out_dir/per_image.csv, summary.csv and backbones.json
    (which model and scaling produced each score). `sampler` draws the images (default: the pipeline; tests pass a
    fake); the pipeline is left with adapters disabled.

    With `sampling.trigger_seeds` fewer than `seeds`, KPS (the harmonic mean of one seed's IS and KP) covers the
    seeds that have both. `sampling.workers` > 1 draws the models side by side in one-thread processes (CPU only,
    base given by name or folder, the pipeline's own sampler): a tiny UNet keeps one thread busy.
    """
    from catlab.sampling.guidance import check_unconditional

    if concept is None:
        raise ValueError(
            "evaluate: pass concept= (a toy concept name, a folder of reference images, or "
            "load_concept(folder_or_images, trigger, class_word))"
        )
    sampling, scorers = sampling or EvalSampling(), (scorers or Scorers()).loaded(device)  # a wrong folder fails now
    check_unconditional(sampling.unconditional)
    c, out = load_concept(concept), Path(out_dir)
    prompts = expand_templates(sampling.templates, c.trigger, c.class_word)
    held_out = sampling.held_out_prompts(c.class_word)
    models = [
        model_images(out, base_id(base), m, a, prompts, sampling, [p for _, p in held_out])
        for m, a in methods_to_draw(adapters).items()
    ]
    pipe = _pipe_loader(base, device)
    _draw(base, models, pipe, sampling, sampler, progress)
    if pipe.loaded is not None and len(models) > 1:
        (sampler or Sampler()).activate(pipe.loaded, BASE, None)
    df = pd.DataFrame(_image_rows(models, prompts, sampling, out, held_out))
    df = score_images(df, [_open_rgb(out / f) for f in df["image"]], c, scorers)
    summary = summarise(df)
    write_csv_atomic(out / "per_image.csv", df)
    write_csv_atomic(out / "summary.csv", summary)
    write_json_atomic(out / "backbones.json", df.attrs.get("backbones", {}))
    return EvalResult(df, summary)


class _pipe_loader:
    """Calls to this load the base pipeline once, on first use (a cached evaluation never loads it)."""

    def __init__(self, base: Any, device: str | None):
        self.base, self.device, self.loaded = base, device, None if isinstance(base, (str, Path)) else base

    def __call__(self):
        if self.loaded is None:
            from catlab.models import load_for_sampling

            # the GPU when there is one, in half precision there with VAE slicing: SD 1.5 in fp32 ran out of memory
            self.loaded = load_for_sampling(str(self.base), device=self.device)
        return self.loaded


def _draw(
    base: Any, models: list, pipe: _pipe_loader, sampling: EvalSampling, sampler: Sampler | None, progress: bool
) -> None:
    """Every model's missing images: side by side in worker processes when that is possible, else here."""
    import torch

    for m in models:
        write_json_atomic(m.folder / "settings.json", m.settings)
    pending = [m for m in models if m.missing()]
    in_workers = (
        sampling.workers > 1 and sampler is None and isinstance(base, (str, Path)) and not torch.cuda.is_available()
    )
    if in_workers and len(pending) > 1:
        draw_in_workers(str(base), pending, sampling.generate_kwargs(), sampling.workers, progress)
        return
    for m in pending:
        draw_missing(m, pipe, sampler or Sampler(), sampling.generate_kwargs(progress))


def _image_rows(
    models: list, prompts: list[tuple[str, str, str]], sampling: EvalSampling, out: Path, held_out=()
) -> list[dict]:
    """One row per model x template x (trigger, class) x seed, then per model x held-out prompt x seed, naming its
    cached image."""
    seeds, trigger_seeds = sampling.seed_lists()
    drawn = [
        (t, kind, p, ss)
        for t, tp, cp in prompts
        for kind, p, ss in (("trigger", tp, trigger_seeds), ("class", cp, seeds))
    ]
    drawn += [(t, "held_out", p, sampling.held_out_seed_list()) for t, p in held_out]
    rows = []
    for m in models:
        for template, kind, p, ss in drawn:
            rows += [
                {
                    "method": m.method,
                    "kind": kind,
                    "template": template,
                    "prompt": p,
                    "seed": s,
                    "image": m.paths[(p, s)].relative_to(out).as_posix(),
                }
                for s in ss
            ]
    return rows
