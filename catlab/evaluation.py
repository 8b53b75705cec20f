"""`evaluate`: generate with the base model and each adapter on the same prompts x seeds, embed, score, summarise.

The scores themselves are pure functions in `catlab.metrics`; this module turns images into a tidy table of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from .embedders import load_embedder
from .metrics import (
    colour_entropy,
    identity_similarity,
    knowledge_preservation,
    kps,
    mean_ci95,
    pairwise_diversity,
    prompt_similarity,
    vendi_score,
)
from .toyworld.world import COLOUR_NAMES, SHAPES

# DreamBench-style (Ruiz et al. 2023, arXiv 2208.12242) recontextualisation and property prompts that the toy world
# can draw; each is also generated without its trigger ("a red {class}") to measure knowledge preservation
DEFAULT_TEMPLATES = (
    "a {trigger} {class}",
    "a {trigger} {class} on a dark background",
    "a {trigger} {class} on a sand background",
    "a red {trigger} {class}",
    "a green {trigger} {class}",
)
BASE = "base"  # method name of the base model, always evaluated: KP needs it
HIGHER_IS_BETTER = {"IS": True, "PS": True, "KP": True, "KPS": True, "DIV": True, "Vendi": True, "PRES": False,
                    "colour_entropy": True, "collapse_rate": False, "attr_acc": True, "identity_acc": True}
SEED_SCORES = ("IS", "PS", "KP", "KPS", "PRES", "collapse_rate", "attr_acc", "identity_acc")  # CI across seeds
SET_SCORES = ("DIV", "Vendi", "colour_entropy")  # one value per (method, class prompt): CI across prompts
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvalResult(NamedTuple):
    per_image: pd.DataFrame  # one row per method x prompt x seed
    summary: pd.DataFrame  # one row per method: {score}_mean, {score}_ci95


@dataclass
class Concept:
    trigger: str
    class_word: str
    references: list[Image.Image]
    name: str | None = None  # toy concept name: lets the oracle score collapse and identity


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def load_concept(concept: Any, trigger: str | None = None, class_word: str | None = None) -> Concept:
    """A Concept from a toy concept name, a folder of reference images (with optional concept.json) or a list of PIL images."""
    from .toyworld.world import CONCEPTS, ToyConcept, concept_images

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
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"concept folder {folder} holds no images ({' '.join(IMAGE_SUFFIXES)})")
        refs = [_open_rgb(f) for f in files]
        if (folder / "concept.json").is_file():  # written by `catlab toyworld export-concept`
            meta = json.loads((folder / "concept.json").read_text())
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


def trigger_free(template: str) -> str:
    """The template without its trigger: 'a {trigger} {class} on a dark background' -> 'a {class} on a dark background'."""
    return re.sub(r"\s+", " ", template.replace("{trigger}", "")).strip()


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
            out.append((t, t.format(trigger=trigger, **{"class": class_word}), trigger_free(t).format(**{"class": class_word})))
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
            from .toyworld.assets import asset_root

            base = asset_root() / "pipeline"
        return _path_id(base) if Path(base).expanduser().exists() else str(base)
    config = getattr(base, "config", None)
    name = getattr(base, "name_or_path", None) or (config.get("_name_or_path") if hasattr(config, "get") else None)
    return _path_id(name) if name and Path(name).exists() else str(name or type(base).__name__)


def _slug(text: str) -> str:
    # readable and unique: prompts that differ only in case or punctuation get different files
    return f"{re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:60]}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # an interrupted run never leaves a half-written cache entry
    img.convert("RGB").save(tmp, format="PNG")
    tmp.replace(path)


def activate_adapter(pipe, method: str, adapter: str | Path | None) -> None:
    """Make `adapter` the only active adapter of `pipe` (None = the base model); each file is loaded once."""
    from .models import load_lora, set_active_adapters

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
    prompts, seeds = list(dict.fromkeys(p for p, _ in missing)), list(dict.fromkeys(s for _, s in missing))
    pipe = get_pipe()
    activate(pipe)
    images = generate_fn(pipe, prompts, seeds, **gen_kwargs)  # images[prompt][seed]
    if len(images) != len(prompts) or any(len(row) != len(seeds) for row in images):
        raise ValueError(f"generate_fn returned {len(images)} rows of {[len(r) for r in images][:5]} images; "
                         f"expected images[prompt][seed] for {len(prompts)} prompts x {len(seeds)} seeds")
    for i, p in enumerate(prompts):
        for j, s in enumerate(seeds):
            if (p, s) in paths and not paths[(p, s)].is_file():
                _save_png(images[i][j], paths[(p, s)])


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


def _named_colour(prompt: str) -> str | None:
    return next((c for c in COLOUR_NAMES if re.search(rf"\b{c}\b", prompt)), None)


def _read_oracle(oracle: Any, images: list[Image.Image]):
    import torch

    from .toyworld.oracle import read_images

    if isinstance(oracle, (str, Path)):
        from .toyworld.assets import load_oracle

        oracle = load_oracle(None if str(oracle) == "toyworld" else oracle)
    if isinstance(oracle, torch.nn.Module):
        return read_images(oracle, images)
    if callable(oracle):
        return oracle(images)
    raise TypeError(f"oracle: expected 'toyworld', an asset folder, an Oracle or a function images -> OracleReading; got {type(oracle).__name__}")


def score_images(df: pd.DataFrame, images: list[Image.Image], concept: Concept, embedder: Any = "toyworld", oracle: Any = None) -> pd.DataFrame:
    """Per-image scores for rows (method, kind, prompt, seed) with `images` aligned to the rows.

    Trigger rows get IS, class rows get KP (against the base row of the same prompt and seed) and PRES, all rows PS.
    Set scores (DIV, Vendi, colour entropy) belong to a (method, class prompt) group and are repeated on its rows.
    """
    df = df.reset_index(drop=True).copy()
    if len(images) != len(df):
        raise ValueError(f"score_images: {len(images)} images for {len(df)} rows; pass one image per row")
    embedder = load_embedder(embedder)
    emb = embedder.embed_images(images)  # (N, D)
    ref = embedder.embed_images(concept.references)  # (R, D)
    trig = (df["kind"] == "trigger").to_numpy()
    cls = np.flatnonzero(~trig)
    sim = identity_similarity(emb, ref, per_image=True)  # (N,)
    df["IS"], df["PRES"] = np.where(trig, sim, np.nan), np.where(~trig, sim, np.nan)

    base_rows = {(p, s): i for i, (m, k, p, s) in enumerate(zip(df.method, df.kind, df.prompt, df.seed)) if m == BASE and k == "class"}
    pairs = [base_rows.get((df.prompt[i], df.seed[i])) for i in cls]
    if any(j is None for j in pairs):
        raise ValueError(f"unpaired generations: the base model has no image for some (class prompt, seed) of the adapters; "
                         f"KP needs method {BASE!r} generated on the same prompts and seeds")
    df["KP"] = np.nan
    if len(cls):
        df.loc[cls, "KP"] = knowledge_preservation(emb[cls], emb[pairs], per_image=True)

    try:
        prompts = list(dict.fromkeys(df["prompt"]))
        text = dict(zip(prompts, embedder.embed_texts(prompts)))
        df["PS"] = prompt_similarity(np.stack([text[p] for p in df["prompt"]]), emb, per_image=True)
    except NotImplementedError as e:
        warnings.warn(f"prompt similarity (PS) left empty: {e}", stacklevel=2)
        df["PS"] = np.nan

    groups = df.iloc[cls].groupby(["method", "prompt"], sort=False).groups
    df["DIV"], df["Vendi"] = np.nan, np.nan
    for idx in groups.values():
        df.loc[idx, "DIV"], df.loc[idx, "Vendi"] = pairwise_diversity(emb[idx]), vendi_score(emb[idx])
    if oracle is not None:
        df = _score_oracle(df, _read_oracle(oracle, images), concept, groups)
    return df


def _score_oracle(df: pd.DataFrame, reading, concept: Concept, groups: Mapping) -> pd.DataFrame:
    df["oracle_shape"], df["oracle_colour"], df["oracle_concept"] = reading.shape, reading.colour, reading.concept
    trig = (df["kind"] == "trigger").to_numpy()
    shape = concept.class_word if concept.class_word in SHAPES else None
    ok = []
    for i, prompt in enumerate(df["prompt"]):
        expected = [(df.oracle_shape[i], shape), (df.oracle_colour[i], None if trig[i] else _named_colour(prompt))]
        checks = [read == want for read, want in expected if want is not None]
        ok.append(np.nan if trig[i] or not checks else float(all(checks)))
    df["attr_ok"] = ok
    if concept.name is None:
        warnings.warn(f"the oracle knows no toy concept with trigger {concept.trigger!r} and class {concept.class_word!r}: "
                      "collapse rate and identity accuracy left empty", stacklevel=3)
    is_concept = (df["oracle_concept"] == concept.name).astype(float).to_numpy() if concept.name else np.full(len(df), np.nan)
    df["collapsed"], df["identity_ok"] = np.where(trig, np.nan, is_concept), np.where(trig, is_concept, np.nan)
    df["colour_entropy"] = np.nan
    for (_, prompt), idx in groups.items():
        if _named_colour(prompt) is None:  # a prompt that names the colour is supposed to be single-coloured
            df.loc[idx, "colour_entropy"] = colour_entropy(df.oracle_colour[idx].tolist())
    return df


def per_seed_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed): IS, PS (trigger prompts), KP, PRES (class prompts), KPS = harmonic mean of that seed's IS and KP."""
    rows = []
    for (method, seed), g in df.groupby(["method", "seed"], sort=False):
        t, c = g[g["kind"] == "trigger"], g[g["kind"] == "class"]
        r = {"method": method, "seed": seed, "IS": t["IS"].mean(), "PS": t["PS"].mean(), "KP": c["KP"].mean(), "PRES": c["PRES"].mean()}
        r["KPS"] = kps(r["IS"], r["KP"])
        if "attr_ok" in g:
            r |= {"collapse_rate": c["collapsed"].mean(), "attr_acc": c["attr_ok"].mean(), "identity_acc": t["identity_ok"].mean()}
        rows.append(r)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and 95% CI half-width of each score, across seeds (set scores: across class prompts)."""
    seeds = per_seed_scores(df)
    sets = df[df["kind"] == "class"].groupby(["method", "prompt"], sort=False).first().reset_index()
    rows = []
    for method in dict.fromkeys(df["method"]):
        s, p = seeds[seeds["method"] == method], sets[sets["method"] == method]
        r: dict[str, Any] = {"method": method, "n_seeds": len(s), "n_prompts": len(p)}
        for score in HIGHER_IS_BETTER:
            src = s if score in SEED_SCORES else p
            if score in src:
                r[f"{score}_mean"], r[f"{score}_ci95"] = mean_ci95(src[score])
        rows.append(r)
    return pd.DataFrame(rows)


def style_summary(summary: pd.DataFrame, digits: int = 3):
    """A pandas Styler for notebooks: 'mean ± CI' per score, the best adapter per score in bold (base excluded)."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    means = summary.set_index("method")[[f"{s}_mean" for s in scores]]
    means.columns = scores
    table = pd.DataFrame(index=means.index)
    for s in scores:
        ci = summary.set_index("method")[f"{s}_ci95"]
        table[s] = [f"{m:.{digits}f}" + ("" if not np.isfinite(c) else f" ± {c:.{digits}f}") for m, c in zip(means[s], ci)]

    def bold_best(col: pd.Series) -> list[str]:
        vals = means[col.name].drop(BASE, errors="ignore") if len(means) > 1 else means[col.name]
        if vals.isna().all():
            return [""] * len(col)
        best = vals.max() if HIGHER_IS_BETTER.get(col.name, True) else vals.min()
        return ["font-weight: bold" if m in vals.index and vals[m] == best else "" for m in col.index]

    arrows = {s: f"{s} {'↑' if HIGHER_IS_BETTER.get(s, True) else '↓'}" for s in scores}
    return (table.style.apply(bold_best, axis=0).format_index(lambda s: arrows.get(s, s), axis=1)
            .set_caption("mean ± 95% CI across seeds (DIV, Vendi, colour entropy: across class prompts); bold = best adapter"))


def evaluate(base: Any = "toyworld", adapters: Mapping[str, str | Path | None] | None = None, concept: Any = None, *,
             trigger: str | None = None, class_word: str | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
             seeds: int | Sequence[int] = 8, embedder: Any = "toyworld", oracle: Any = None, out_dir: str | Path = "runs/eval",
             num_inference_steps: int | None = None, guidance_scale: float | None = None, batch_size: int = 32,
             device: str | None = None, progress: bool = True, generate_fn: Callable | None = None,
             activate_fn: Callable | None = None) -> EvalResult:
    """Generate with the base model and each adapter on the same prompts x seeds, embed, score and summarise.

    base: a pipeline or 'toyworld' / folder / hub id. adapters: method name -> adapter path, or None for the base
    model itself. concept: toy concept name, folder of reference images, or list of PIL images. templates: strings
    with {trigger} and {class}; each is also generated trigger-free. Images are cached as PNGs under
    out_dir/images (keyed by base, adapter, settings, prompt and seed), so a second call only re-scores.
    Writes out_dir/per_image.csv and out_dir/summary.csv. generate_fn / activate_fn(pipe, method, adapter_path)
    default to catlab.sample.generate / activate_adapter; the pipeline is left with adapters disabled.
    """
    if concept is None:
        raise ValueError("evaluate: pass concept= (a toy concept name, a folder of reference images, or a list of PIL images)")
    c = load_concept(concept, trigger, class_word)
    prompts = expand_templates(templates, c.trigger, c.class_word)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"evaluate: seeds must be a positive count or distinct integers, got {seeds}")
    methods, out = _methods(adapters), Path(out_dir)
    if generate_fn is None:
        from .sample import generate as generate_fn
    activate_fn = activate_fn or activate_adapter
    gen_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "batch_size": batch_size, "progress": progress}
    loaded: dict[str, Any] = {}

    def get_pipe():
        if "pipe" not in loaded:
            if isinstance(base, (str, Path)):
                import torch

                from .models import load_base

                loaded["pipe"] = load_base(str(base), device=device or ("cuda" if torch.cuda.is_available() else None))
            else:
                loaded["pipe"] = base
        return loaded["pipe"]

    base_id, rows = _base_id(base), []
    for method, adapter in methods.items():
        settings = {"base": base_id, "adapter": None if adapter is None else _path_id(adapter),
                    "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        # the base model's images are shared by every method that is the base model
        folder = out / "images" / (f"{BASE}_{key}" if adapter is None else f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', method)}_{key}")
        paths = {(p, s): folder / f"{_slug(p)}_s{s}.png" for _, tp, cp in prompts for p in (tp, cp) for s in seeds}
        _generate_missing(paths, get_pipe, lambda pipe, m=method, a=adapter: activate_fn(pipe, m, a), generate_fn, gen_kwargs)
        (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        for template, tp, cp in prompts:
            for kind, p in (("trigger", tp), ("class", cp)):
                rows += [{"method": method, "kind": kind, "template": template, "prompt": p, "seed": s,
                          "image": paths[(p, s)].relative_to(out).as_posix()} for s in seeds]
    if "pipe" in loaded and len(methods) > 1:
        activate_fn(loaded["pipe"], BASE, None)
    df = pd.DataFrame(rows)
    df = score_images(df, [_open_rgb(out / f) for f in df["image"]], c, load_embedder(embedder, device=device), oracle)
    summary = summarise(df)
    df.to_csv(out / "per_image.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    return EvalResult(df, summary)


def evaluate_cli(args) -> int:
    """`catlab eval`: score adapters against the base model; prints the summary and writes the CSVs."""
    adapters = {}
    for pair in args.adapter:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"catlab: error: --adapter expects NAME=PATH, got {pair!r}")
        adapters[name] = path
    oracle = None
    if args.base == "toyworld":
        from .toyworld.assets import ToyWorldAssetError, toyworld_path

        try:
            oracle = toyworld_path("oracle")
        except ToyWorldAssetError as e:
            print(f"note: oracle scores skipped ({e})")
    try:
        res = evaluate(args.base, adapters, args.concept, trigger=args.trigger, class_word=args.class_word, seeds=args.seeds,
                       embedder=args.embedder, oracle=oracle, out_dir=args.out)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"catlab: error: {e}") from e
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(style_summary(res.summary).data.to_string())
    print(f"wrote {Path(args.out) / 'per_image.csv'} and {Path(args.out) / 'summary.csv'}")
    return 0
