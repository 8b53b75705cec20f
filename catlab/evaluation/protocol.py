"""`evaluate`: generate with the base model and each adapter on the same prompts x seeds, embed, score, summarise.

This module generates and caches the images; `catlab.evaluation.scoring` turns them into a tidy table of scores, which are
pure functions in `catlab.evaluation.metrics`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from PIL import Image

from catlab.data.captions import trigger_free_caption
from catlab.data.concepts import IMAGE_EXTENSIONS, list_images, read_concept_metadata
from catlab.evaluation.embedders import load_embedder
from catlab.evaluation.scoring import BASE, Concept, score_images, summarise
from catlab.files import save_image_atomic, write_csv_atomic, write_json_atomic

# DreamBench-style (Ruiz et al. 2023, arXiv 2208.12242) recontextualisation and property prompts that the toy world
# can draw; each is also generated without its trigger ("a red {class}") to measure knowledge preservation
DEFAULT_TEMPLATES = (
    "a {trigger} {class}",
    "a {trigger} {class} on a dark background",
    "a {trigger} {class} on a sand background",
    "a red {trigger} {class}",
    "a green {trigger} {class}",
)


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
            raise FileNotFoundError(f"concept {concept!s}: no such folder; pass a folder of reference images, "
                                    f"a toy concept name ({', '.join(CONCEPTS)}) or a list of PIL images")
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
        raise ValueError("concept: a trigger and a class word are needed; pass trigger='sks', class_word='circle' "
                         "(or use a toy concept name, or a folder with a concept.json)")
    if name is None:  # a user folder of a toy concept still gets oracle collapse scores
        name = next((c.name for c in CONCEPTS.values() if (c.trigger, c.class_word) == (trigger, class_word)), None)
    return Concept(trigger, class_word, refs, name)


def trigger_free_template(template: str) -> str:
    """The template's trigger-free form, made as training makes trigger-free captions (`trigger_free_caption`, "drop"):
    'a {trigger} {class} on a dark background' -> 'a {class} on a dark background'."""
    return trigger_free_caption(template, "{trigger}", "drop")


def expand_templates(templates: str | Sequence[str], trigger: str, class_word: str) -> list[tuple[str, str, str]]:
    """(template, trigger prompt, trigger-free class prompt) per template, with clear errors for malformed templates."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("evaluate: the prompt template list is empty; pass e.g. ['a {trigger} {class}'] or leave the default")
    out = []
    for t in templates:
        for slot in ("{class}", "{trigger}"):
            if slot not in t:
                raise ValueError(f"prompt template {t!r} has no {slot} placeholder; write e.g. 'a {{trigger}} {{class}} on a dark background'")
        try:
            out.append((t, t.format(trigger=trigger, **{"class": class_word}), trigger_free_template(t).format(**{"class": class_word})))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt template {t!r}: only {{trigger}} and {{class}} are allowed ({e!r}); write literal braces as {{{{ }}}}") from e
    return out


def _path_id(path: str | Path) -> str:
    # resolved path + newest mtime + total size: a retrained model or adapter at the same path misses the image cache
    p = Path(path).expanduser().resolve()
    stats = [f.stat() for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return f"{p}|{max((s.st_mtime_ns for s in stats), default=0)}|{sum(s.st_size for s in stats)}"


def _base_id(base: Any) -> str:
    if isinstance(base, (str, Path)):
        if str(base) == "toyworld":
            from catlab.toyworld.assets import asset_root

            base = asset_root() / "pipeline"
        return _path_id(base) if Path(base).expanduser().exists() else str(base)
    config = getattr(base, "config", None)
    name = getattr(base, "name_or_path", None) or (config.get("_name_or_path") if hasattr(config, "get") else None)
    return _path_id(name) if name and Path(name).exists() else str(name or type(base).__name__)


def _slug(text: str) -> str:
    # readable and unique: prompts that differ only in case or punctuation get different files
    return f"{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:60]}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _save_png(img: Image.Image, path: Path) -> None:
    save_image_atomic(img.convert("RGB"), path)  # an interrupted run never leaves a half-written cache entry


def activate_adapter(pipe, method: str, adapter: str | Path | None) -> None:
    """Make `adapter` the only active adapter of `pipe` (None = the base model); each file is loaded once."""
    from catlab.models import load_lora, set_active_adapters

    if adapter is None:
        set_active_adapters(pipe, None)
        return
    name = "eval_" + hashlib.sha1(_path_id(adapter).encode()).hexdigest()[:10]  # method names may not be valid adapter names
    if name in getattr(pipe.unet, "peft_config", {}):
        set_active_adapters(pipe, [name])
    else:
        load_lora(pipe, adapter, adapter_name=name)  # loads and activates


def _generate_missing(paths: Mapping[tuple[str, int], Path], get_pipe: Callable, activate: Callable, generate_fn: Callable, gen_kwargs: dict) -> None:
    missing = [k for k, p in paths.items() if not p.is_file()]
    if not missing:
        return
    # prompts that miss the same seeds are drawn in one call (trigger prompts may have fewer seeds than class prompts)
    seeds_of: dict[str, list[int]] = {}
    for p, s in missing:
        seeds_of.setdefault(p, []).append(s)
    calls: dict[tuple[int, ...], list[str]] = {}
    for p, ss in seeds_of.items():
        calls.setdefault(tuple(ss), []).append(p)
    pipe = get_pipe()
    activate(pipe)
    for seeds, prompts in calls.items():
        images = generate_fn(pipe, prompts, list(seeds), **gen_kwargs)  # images[prompt][seed]
        if len(images) != len(prompts) or any(len(row) != len(seeds) for row in images):
            raise ValueError(f"generate_fn returned {len(images)} rows of {[len(r) for r in images][:5]} images; "
                             f"expected images[prompt][seed] for {len(prompts)} prompts x {len(seeds)} seeds")
        for i, p in enumerate(prompts):
            for j, s in enumerate(seeds):
                _save_png(images[i][j], paths[(p, s)])


def _image_paths(out: Path, base_id: str, method: str, adapter: Path | None, prompts, seeds, num_inference_steps, guidance_scale,
                 unconditional: str, trigger_seeds: list[int]) -> tuple[Path, dict, dict[tuple[str, int], Path]]:
    """Where evaluate caches one model's images: its folder, the settings that key it, and a path per (prompt, seed)."""
    settings = {"base": base_id, "adapter": None if adapter is None else _path_id(adapter),
                "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    if adapter is not None and unconditional != "adapted":  # the base model's images are the same either way
        settings["unconditional"] = unconditional
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    # the base model's images are shared by every method that is the base model
    folder = out / "images" / (f"{BASE}_{key}" if adapter is None else f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', method)}_{key}")
    paths = {(p, s): folder / f"{_slug(p)}_s{s}.png" for _, tp, cp in prompts for p, ss in ((tp, trigger_seeds), (cp, seeds)) for s in ss}
    return folder, settings, paths


def _seed_lists(seeds: int | Sequence[int], trigger_seeds: int | Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(class-prompt seeds, trigger-prompt seeds): a count n -> [0, ..., n-1], a list of distinct integers as given;
    trigger_seeds None -> the same as seeds."""
    out = []
    for what, value in (("seeds", seeds), ("trigger_seeds", seeds if trigger_seeds is None else trigger_seeds)):
        listed = list(range(value)) if isinstance(value, int) else [int(s) for s in value]
        if not listed or len(set(listed)) != len(listed):
            raise ValueError(f"evaluate: {what} must be a positive count or distinct integers, got {value}")
        out.append(listed)
    return out[0], out[1]


def sample_for_evaluation(base: str, method: str, adapter: str | Path | None, *, trigger: str, class_word: str,
                          templates: Sequence[str] = DEFAULT_TEMPLATES, seeds: int | Sequence[int] = 8, out_dir: str | Path = "runs/eval",
                          num_inference_steps: int | None = None, guidance_scale: float | None = None, batch_size: int = 32,
                          unconditional: str = "adapted", trigger_seeds: int | Sequence[int] | None = None) -> None:
    """Draw one model's evaluation images into evaluate's cache, so that a later `evaluate` with the same arguments only
    scores them. For pipelines: the demo samples each adapter in the worker that has just trained it. The pipeline
    (`base`, a name or folder) is loaded once per process."""
    prompts = expand_templates(templates, trigger, class_word)
    seeds, trigger_seeds = _seed_lists(seeds, trigger_seeds)
    adapter = None if adapter is None else Path(adapter).expanduser()
    _, _, paths = _image_paths(Path(out_dir), _base_id(base), method, adapter, prompts, seeds, num_inference_steps, guidance_scale,
                               unconditional, trigger_seeds)
    gen_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "batch_size": batch_size, "progress": False}
    if unconditional != "adapted":
        gen_kwargs["unconditional"] = unconditional
    _generate_method_in_worker(str(base), method, adapter, paths, gen_kwargs)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_WORKER_PIPES: dict[str, Any] = {}  # one pipeline per worker process, loaded by its first job


def start_one_thread_worker() -> None:
    """Process-pool initializer: one torch thread per worker (a tiny UNet keeps one thread busy)."""
    import torch

    torch.set_num_threads(1)


def _generate_method_in_worker(base: str, method: str, adapter: Path | None, paths: dict, gen_kwargs: dict) -> str:
    from catlab.notices import quiet_libraries
    from catlab.sampling.sampler import generate

    def get_pipe():
        if base not in _WORKER_PIPES:
            from catlab.models import load_base

            _WORKER_PIPES[base] = load_base(base)
        return _WORKER_PIPES[base]

    with quiet_libraries():
        _generate_missing(paths, get_pipe, lambda pipe: activate_adapter(pipe, method, adapter), generate, {**gen_kwargs, "progress": False})
    return method


def _generate_in_workers(base: str, jobs: list, gen_kwargs: dict, workers: int) -> None:
    """Each method's missing images in its own job, `workers` one-thread processes at a time; one bar over methods."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    workers = min(workers, len(jobs))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_one_thread_worker) as pool:
        futures = [pool.submit(_generate_method_in_worker, base, m, a, dict(p), gen_kwargs) for m, a, p in jobs]
        bar = tqdm(as_completed(futures), total=len(futures), desc=f"sampling {len(jobs)} models, {workers} at a time", unit="model",
                   disable=not gen_kwargs.get("progress", True))
        for future in bar:
            future.result()  # a worker's error surfaces here, with its traceback


def _methods(adapters: Mapping[str, str | Path | None] | None) -> dict[str, Path | None]:
    methods: dict[str, Path | None] = {BASE: None}
    for name, path in (adapters or {}).items():
        if name == BASE and path is not None:
            raise ValueError(f"the method name {BASE!r} is reserved for the base model; rename the adapter at {path}")
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"adapter {name!r}: {path} does not exist; pass the folder written by `catlab train` "
                                    "(with pytorch_lora_weights.safetensors) or None for the base model")
        methods[name] = None if path is None else Path(path).expanduser()
    return methods



def evaluate(base: Any = "toyworld", adapters: Mapping[str, str | Path | None] | None = None, concept: Any = None, *,
             trigger: str | None = None, class_word: str | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
             seeds: int | Sequence[int] = 8, embedder: Any = "toyworld", oracle: Any = None, out_dir: str | Path = "runs/eval",
             num_inference_steps: int | None = None, guidance_scale: float | None = None, batch_size: int = 32,
             device: str | None = None, progress: bool = True, generate_fn: Callable | None = None,
             activate_fn: Callable | None = None, dino: Any = None, clip: Any = None, unconditional: str = "adapted",
             workers: int = 1, trigger_seeds: int | Sequence[int] | None = None) -> EvalResult:
    """Generate with the base model and each adapter on the same prompts x seeds, embed, score and summarise.

    base: a pipeline or 'toyworld' / folder / hub id. adapters: method name -> adapter path, or None for the base
    model itself. concept: toy concept name, folder of reference images, or list of PIL images. templates: strings
    with {trigger} and {class}; each is also generated trigger-free. Images are cached as PNGs under
    out_dir/images (keyed by base, adapter, settings, prompt and seed), so a second call only re-scores.
    Writes out_dir/per_image.csv, out_dir/summary.csv and out_dir/backbones.json (which model and scaling produced
    each score). generate_fn / activate_fn(pipe, method, adapter_path) default to catlab.sampling.sampler.generate /
    activate_adapter; the pipeline is left with adapters disabled.

    The metrics real-world papers report, as raw cosines (off by default): dino = a ViT / DINOv2 folder or hub id
    (DreamBooth's facebook/dino-vits16) or an Embedder adds DINO_cos and DINO-PRES_cos; clip = True (the evaluation
    embedder, a CLIP) or a CLIP folder / hub id / Embedder adds CLIP-I_cos and CLIP-T_cos. See docs/metrics.md.

    unconditional="base" samples every adapter with classifier-free guidance's unconditional branch from the base
    model (catlab.sampling.guidance; generate_fn must then accept `unconditional`).

    trigger_seeds (default: `seeds`) draws the trigger prompts on their own seeds, e.g. fewer: identity is a rate
    over trigger samples, while the class's diversity and preservation need many class samples. KPS, the harmonic
    mean of one seed's IS and KP, then covers the seeds that have both.

    workers > 1 generates the methods' images side by side in that many processes of one thread each (CPU only,
    base given by name or folder, default generate/activate functions): a tiny UNet keeps one thread busy, so two
    processes on two cores draw nearly twice as fast as one process on both.
    """
    if concept is None:
        raise ValueError("evaluate: pass concept= (a toy concept name, a folder of reference images, or a list of PIL images)")
    from catlab.sampling.guidance import check_unconditional

    check_unconditional(unconditional)
    c = load_concept(concept, trigger, class_word)
    prompts = expand_templates(templates, c.trigger, c.class_word)
    seeds, trigger_seeds = _seed_lists(seeds, trigger_seeds)
    methods, out = _methods(adapters), Path(out_dir)
    # loaded before generating, so a wrong folder fails in seconds, not after the images
    embedder = load_embedder(embedder, device=device)
    dino = None if dino is None else load_embedder(dino, device=device, kind="dino")
    if clip is not None and clip is not False and clip is not True:
        clip = load_embedder(clip, device=device, kind="clip")
    clip_embedder = embedder if clip is True else None if clip is None or clip is False else clip
    if clip_embedder is not None and not clip_embedder.has_text:
        raise ValueError(f"CLIP-T needs a CLIP with a text tower; {clip_embedder.backbone} embeds images only. Pass clip= a CLIP "
                         "folder or hub id (openai/clip-vit-base-patch32), or clip=True with a CLIP as the evaluation embedder")
    in_workers = workers > 1 and generate_fn is None and activate_fn is None and isinstance(base, (str, Path)) and not _has_cuda()
    if generate_fn is None:
        from catlab.sampling.sampler import generate as generate_fn
    activate_fn = activate_fn or activate_adapter
    gen_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "batch_size": batch_size, "progress": progress}
    if unconditional != "adapted":  # passed only when set, so a generate_fn written before the option still works
        gen_kwargs["unconditional"] = unconditional
    loaded: dict[str, Any] = {}

    def get_pipe():
        if "pipe" not in loaded:
            if isinstance(base, (str, Path)):
                import torch

                from catlab.models import load_base

                loaded["pipe"] = load_base(str(base), device=device or ("cuda" if torch.cuda.is_available() else None))
            else:
                loaded["pipe"] = base
        return loaded["pipe"]

    base_id, rows, to_generate = _base_id(base), [], []
    for method, adapter in methods.items():
        folder, settings, paths = _image_paths(out, base_id, method, adapter, prompts, seeds, num_inference_steps, guidance_scale,
                                               unconditional, trigger_seeds)
        to_generate.append((method, adapter, paths))
        write_json_atomic(folder / "settings.json", settings)
        for template, tp, cp in prompts:
            for kind, p, ss in (("trigger", tp, trigger_seeds), ("class", cp, seeds)):
                rows += [{"method": method, "kind": kind, "template": template, "prompt": p, "seed": s,
                          "image": paths[(p, s)].relative_to(out).as_posix()} for s in ss]
    pending = [(m, a, p) for m, a, p in to_generate if any(not f.is_file() for f in p.values())]
    if in_workers and len(pending) > 1:
        _generate_in_workers(str(base), pending, gen_kwargs, workers)
    else:
        for method, adapter, paths in pending:
            _generate_missing(paths, get_pipe, lambda pipe, m=method, a=adapter: activate_fn(pipe, m, a), generate_fn, gen_kwargs)
    if "pipe" in loaded and len(methods) > 1:
        activate_fn(loaded["pipe"], BASE, None)
    df = pd.DataFrame(rows)
    df = score_images(df, [_open_rgb(out / f) for f in df["image"]], c, embedder, oracle, dino=dino, clip=clip)
    summary = summarise(df)
    write_csv_atomic(out / "per_image.csv", df)
    write_csv_atomic(out / "summary.csv", summary)
    write_json_atomic(out / "backbones.json", df.attrs.get("backbones", {}))
    return EvalResult(df, summary)
