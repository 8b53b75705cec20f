"""The evaluation images: which prompts and seeds each model draws (`EvalSampling`), who draws them (`Sampler`), and
the cache on disk that lets a second `evaluate` only re-score.

Every image is keyed by the base model, the adapter (path, size and time), the sampler settings, the prompt and the
seed, so a retrained adapter or a changed setting draws afresh and nothing stale is ever scored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from catlab.data.captions import trigger_free_caption
from catlab.evaluation.scoring import BASE
from catlab.files import save_image_atomic, write_json_atomic

# DreamBench-style (Ruiz et al. 2023, arXiv 2208.12242) recontextualisation and property prompts that the toy world
# can draw; each is also generated without its trigger ("a red {class}") to measure knowledge preservation
DEFAULT_TEMPLATES = (
    "a {trigger} {class}",
    "a {trigger} {class} on a dark background",
    "a {trigger} {class} on a sand background",
    "a red {trigger} {class}",
    "a green {trigger} {class}",
)


@dataclass(frozen=True)
class EvalSampling:
    """How the evaluation images are drawn: shared by `evaluate`, `sample_for_evaluation` and the demo's report.
    Every field but `workers` keys the image cache."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # with {trigger} and {class}; each is also drawn trigger-free
    seeds: int | tuple[int, ...] = 8  # class-prompt seeds: a count n means 0..n-1
    # trigger-prompt seeds (None = seeds): identity is a rate over trigger samples and needs fewer than the class's
    # diversity and preservation do
    trigger_seeds: int | tuple[int, ...] | None = None
    # prompts no concept names, drawn as written by every model ({class} = the concept's class word): other classes
    # and held-out prompts, to see what training did beyond the concept's own class (docs/metrics.md, "Held out")
    held_out: tuple[str, ...] = ()
    held_out_seeds: int | tuple[int, ...] | None = None  # None = seeds
    num_inference_steps: int | None = None  # None = the base model's own (catlab_sampling.json, else diffusers')
    guidance_scale: float | None = None
    batch_size: int | None = None  # images per pipeline call; None = catlab.sampling's default for the device
    unconditional: str = "adapted"  # classifier-free guidance's unconditional branch: "adapted" or "base"
    workers: int = 1  # one-thread CPU processes drawing side by side: faster on a CPU, the same images

    def __post_init__(self):
        templates = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        object.__setattr__(self, "templates", templates)
        held_out = (self.held_out,) if isinstance(self.held_out, str) else tuple(self.held_out)
        object.__setattr__(self, "held_out", held_out)
        for name in ("seeds", "trigger_seeds", "held_out_seeds"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int):
                object.__setattr__(self, name, tuple(int(s) for s in value))

    def seed_lists(self) -> tuple[list[int], list[int]]:
        """(class-prompt seeds, trigger-prompt seeds) as lists of distinct integers."""
        out = []
        for what, value in (
            ("seeds", self.seeds),
            ("trigger_seeds", self.seeds if self.trigger_seeds is None else self.trigger_seeds),
        ):
            listed = list(range(value)) if isinstance(value, int) else list(value)
            if not listed or len(set(listed)) != len(listed):
                raise ValueError(
                    f"evaluation sampling: {what} must be a positive count or distinct integers, got {value}"
                )
            out.append(listed)
        return out[0], out[1]

    def held_out_seed_list(self) -> list[int]:
        """The seeds each held-out prompt is drawn on (`held_out_seeds`, else the class prompt's)."""
        if self.held_out_seeds is None:
            return self.seed_lists()[0]
        return EvalSampling(seeds=self.held_out_seeds).seed_lists()[0]

    def held_out_prompts(self, class_word: str) -> list[tuple[str, str]]:
        """(template, prompt) per held-out prompt, {class} filled in; a clear error for a malformed one."""
        out = []
        for t in self.held_out:
            if "{trigger}" in t:
                raise ValueError(
                    f"held-out prompt {t!r} names the trigger: held-out prompts are drawn as written, without "
                    "the concept; drop {trigger} (e.g. 'a square', 'a {class} on a dark background')"
                )
            try:
                out.append((t, t.format(**{"class": class_word})))
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"held-out prompt {t!r}: only {{class}} is allowed ({e!r})") from e
        return out

    def generate_kwargs(self, progress: bool = False) -> dict:
        """What `catlab.sampling.sampler.generate` takes from these settings."""
        kwargs = {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "progress": progress,
        }
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        if self.unconditional != "adapted":  # passed only when set, so a sampler written before the option still works
            kwargs["unconditional"] = self.unconditional
        return kwargs


def trigger_free_template(template: str) -> str:
    """The template's trigger-free form, made as training makes trigger-free captions (`trigger_free_caption`, "drop"):
    'a {trigger} {class} on a dark background' -> 'a {class} on a dark background'."""
    return trigger_free_caption(template, "{trigger}", "drop")


def expand_templates(templates: str | Sequence[str], trigger: str, class_word: str) -> list[tuple[str, str, str]]:
    """(template, trigger prompt, trigger-free class prompt) per template, with clear errors for malformed templates."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError(
            "evaluate: the prompt template list is empty; pass e.g. ['a {trigger} {class}'] or leave the default"
        )
    out = []
    for t in templates:
        for slot in ("{class}", "{trigger}"):
            if slot not in t:
                raise ValueError(
                    f"prompt template {t!r} has no {slot} placeholder; write e.g. "
                    "'a {{trigger}} {{class}} on a dark background'"
                )
        try:
            out.append(
                (
                    t,
                    t.format(trigger=trigger, **{"class": class_word}),
                    trigger_free_template(t).format(**{"class": class_word}),
                )
            )
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"prompt template {t!r}: only {{trigger}} and {{class}} are allowed ({e!r}); "
                "write literal braces as {{{{ }}}}"
            ) from e
    return out


class Sampler:
    """Who draws a model's images: the pipeline itself. Tests hand `evaluate` a subclass that draws solid colours."""

    def activate(self, pipe, method: str, adapter: Path | None) -> None:
        activate_adapter(pipe, method, adapter)

    def generate(self, pipe, prompts: Sequence[str], seeds: Sequence[int], **settings) -> list[list[Image.Image]]:
        from catlab.sampling.sampler import generate

        return generate(pipe, prompts, seeds, **settings)


def activate_adapter(pipe, method: str, adapter: str | Path | None) -> None:
    """Make `adapter` the only active adapter of `pipe` (None = the base model); each file is loaded once."""
    from catlab.models import load_lora, set_active_adapters

    if adapter is None:
        set_active_adapters(pipe, None)
        return
    name = (
        "eval_" + hashlib.sha1(path_id(adapter).encode()).hexdigest()[:10]
    )  # method names may not be valid adapter names
    if name in getattr(pipe.unet, "peft_config", {}):
        set_active_adapters(pipe, [name])
    else:
        load_lora(pipe, adapter, adapter_name=name)  # loads and activates


def path_id(path: str | Path) -> str:
    """Resolved path + newest mtime + total size: a retrained model or adapter at the same path misses the cache."""
    p = Path(path).expanduser().resolve()
    stats = [f.stat() for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return f"{p}|{max((s.st_mtime_ns for s in stats), default=0)}|{sum(s.st_size for s in stats)}"


def base_id(base: Any) -> str:
    """What keys the base model in the cache: its folder's `path_id`, else its name."""
    if isinstance(base, (str, Path)):
        if str(base) == "toyworld":
            from catlab.toyworld.assets import asset_root

            base = asset_root() / "pipeline"
        return path_id(base) if Path(base).expanduser().exists() else str(base)
    config = getattr(base, "config", None)
    name = getattr(base, "name_or_path", None) or (config.get("_name_or_path") if hasattr(config, "get") else None)
    return path_id(name) if name and Path(name).exists() else str(name or type(base).__name__)


def prompt_slug(text: str) -> str:
    # readable and unique: prompts that differ only in case or punctuation get different files
    return f"{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:60]}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


@dataclass
class ModelImages:
    """One model's cached evaluation images: its folder, the settings that key it, a path per (prompt, seed)."""

    method: str
    adapter: Path | None
    folder: Path
    settings: dict
    paths: dict[tuple[str, int], Path] = field(default_factory=dict)

    def missing(self) -> list[tuple[str, int]]:
        return [k for k, p in self.paths.items() if not p.is_file()]


def model_images(
    out: Path,
    base_key: str,
    method: str,
    adapter: Path | None,
    prompts: list[tuple[str, str, str]],
    sampling: EvalSampling,
    held_out: list[str] = (),
) -> ModelImages:
    """Where `evaluate` caches one model's images for these prompts (and held-out prompts) and settings."""
    settings = {
        "base": base_key,
        "adapter": None if adapter is None else path_id(adapter),
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
    }
    if adapter is not None and sampling.unconditional != "adapted":  # the base model's images are the same either way
        settings["unconditional"] = sampling.unconditional
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    # the base model's images are shared by every method that is the base model
    folder = (
        out / "images" / (f"{BASE}_{key}" if adapter is None else f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', method)}_{key}")
    )
    seeds, trigger_seeds = sampling.seed_lists()
    paths = {
        (p, s): folder / f"{prompt_slug(p)}_s{s}.png"
        for _, tp, cp in prompts
        for p, ss in ((tp, trigger_seeds), (cp, seeds))
        for s in ss
    }
    paths |= {(p, s): folder / f"{prompt_slug(p)}_s{s}.png" for p in held_out for s in sampling.held_out_seed_list()}
    return ModelImages(method, adapter, folder, settings, paths)


def draw_missing(images: ModelImages, pipe, sampler: Sampler, generate_kwargs: dict) -> None:
    """Draw the images of `images` that are not on disk yet; `pipe` is a pipeline or a callable that loads one."""
    missing = images.missing()
    if not missing:
        return
    # prompts that miss the same seeds are drawn in one call (trigger prompts may have fewer seeds than class prompts)
    seeds_of: dict[str, list[int]] = {}
    for p, s in missing:
        seeds_of.setdefault(p, []).append(s)
    calls: dict[tuple[int, ...], list[str]] = {}
    for p, ss in seeds_of.items():
        calls.setdefault(tuple(ss), []).append(p)
    pipe = pipe() if callable(pipe) else pipe
    sampler.activate(pipe, images.method, images.adapter)
    for seeds, prompts in calls.items():
        drawn = sampler.generate(pipe, prompts, list(seeds), **generate_kwargs)  # drawn[prompt][seed]
        if len(drawn) != len(prompts) or any(len(row) != len(seeds) for row in drawn):
            raise ValueError(
                f"the sampler returned {len(drawn)} rows of {[len(r) for r in drawn][:5]} images; "
                f"expected images[prompt][seed] for {len(prompts)} prompts x {len(seeds)} seeds"
            )
        for i, p in enumerate(prompts):
            for j, s in enumerate(seeds):
                # an interrupted run never leaves a half-written cache entry
                save_image_atomic(drawn[i][j].convert("RGB"), images.paths[(p, s)])


def draw_through_cache(
    pipe,
    models: Mapping[str, str | Path | None],
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: EvalSampling,
    out_dir: str | Path,
    base: Any = "toyworld",
) -> dict[str, list[list[Image.Image]]]:
    """images[model][prompt][seed], drawn into `evaluate`'s cache under out_dir (what is there already is read): a later
    `evaluate` with the same sampling, out_dir and model names scores them without drawing them again. models: name ->
    adapter folder or file, None for the base model; `base` names the base `pipe` was loaded from, as `evaluate` gets it."""
    seeds = [int(s) for s in seeds]
    every = replace(sampling, held_out_seeds=tuple(seeds))  # each prompt as a held-out one: keyed by prompt and seed
    images = {}
    for name, adapter in models.items():
        cached = model_images(Path(out_dir), base_id(base), name, None if adapter is None else Path(adapter), [], every,
                              list(prompts))  # fmt: skip
        write_json_atomic(cached.folder / "settings.json", cached.settings)
        draw_missing(cached, lambda: pipe, Sampler(), every.generate_kwargs())  # a pipeline is callable: wrap it
        images[name] = [[_read_rgb(cached.paths[(p, s)]) for s in seeds] for p in prompts]
    return images


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# ----------------------------------------------------------------------------- drawing in worker processes

_WORKER_PIPES: dict[str, Any] = {}  # one pipeline per worker process, loaded by its first job


def start_one_thread_worker() -> None:
    """Process-pool initializer: one torch thread per worker (a tiny UNet keeps one thread busy)."""
    import torch

    torch.set_num_threads(1)


def draw_in_this_process(base: str, images: ModelImages, generate_kwargs: dict) -> str:
    """Draw one model's missing images with the pipeline this process keeps for `base` (loaded once)."""
    from catlab.notices import quiet_libraries

    def get_pipe():
        if base not in _WORKER_PIPES:
            from catlab.models import load_base

            _WORKER_PIPES[base] = load_base(base)
        return _WORKER_PIPES[base]

    with quiet_libraries():
        draw_missing(images, get_pipe, Sampler(), {**generate_kwargs, "progress": False})
    return images.method


def draw_in_workers(
    base: str, models: list[ModelImages], generate_kwargs: dict, workers: int, progress: bool = True
) -> None:
    """Each model's missing images in its own job, `workers` one-thread processes at a time; one bar over models."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    workers = min(workers, len(models))
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_one_thread_worker
    ) as pool:
        futures = [pool.submit(draw_in_this_process, base, m, generate_kwargs) for m in models]
        bar = tqdm(
            as_completed(futures),
            total=len(futures),
            desc=f"sampling {len(models)} models, {workers} at a time",
            unit="model",
            disable=not progress,
        )
        for future in bar:
            future.result()  # a worker's error surfaces here, with its traceback


def sample_for_evaluation(
    base: str,
    method: str,
    adapter: str | Path | None,
    trigger: str,
    class_word: str,
    sampling: EvalSampling,
    out_dir: str | Path = "runs/eval",
) -> None:
    """Draw one model's evaluation images into evaluate's cache, so that a later `evaluate` with the same settings only
    scores them. For pipelines: the demo samples each adapter in the worker that has just trained it. The pipeline
    (`base`, a name or folder) is loaded once per process."""
    prompts = expand_templates(sampling.templates, trigger, class_word)
    held_out = [p for _, p in sampling.held_out_prompts(class_word)]
    adapter = None if adapter is None else Path(adapter).expanduser()
    images = model_images(Path(out_dir), base_id(base), method, adapter, prompts, sampling, held_out)
    draw_in_this_process(str(base), images, sampling.generate_kwargs())


def methods_to_draw(adapters: Mapping[str, str | Path | None] | None) -> dict[str, Path | None]:
    """The base model first, then each named adapter (None = the base model again, under that name)."""
    methods: dict[str, Path | None] = {BASE: None}
    for name, path in (adapters or {}).items():
        if name == BASE and path is not None:
            raise ValueError(f"the method name {BASE!r} is reserved for the base model; rename the adapter at {path}")
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(
                f"adapter {name!r}: {path} does not exist; pass the folder written by `catlab train` "
                "(with pytorch_lora_weights.safetensors) or None for the base model"
            )
        methods[name] = None if path is None else Path(path).expanduser()
    return methods
