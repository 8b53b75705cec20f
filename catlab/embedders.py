"""Image and text embedders behind one interface, with a content-keyed cache.

Every score in `catlab.metrics` is a function of L2-normalised embeddings, so anything that maps images to
vectors can stand in for CLIP: the toy world's tiny CLIP, any transformers CLIP (the CAT authors used
openai/clip-vit-base-patch32), or a plain function. Embeddings are cached by image content, so scoring the
same images again (a second `evaluate`, a re-summary in a notebook) costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def hash_image(image: Image.Image) -> str:
    """Content key of an image: sha1 of its mode, size and pixel bytes (file names and metadata do not matter)."""
    h = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def normalise_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is then 0)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def check_embeddings(x: Any, n: int, who: str, what: str = "images") -> np.ndarray:
    """`x` as a float array of shape (n, D), or a ValueError that names the embedder and both shapes."""
    if hasattr(x, "detach"):  # torch tensors, possibly on an accelerator
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"embedder {who} returned shape {tuple(x.shape)} for {n} {what}; expected a 2-D array of shape "
                         f"({n}, D), one row per input. Check that the function embeds a whole list at once and does not squeeze or flatten.")
    if not np.isfinite(x).all():
        raise ValueError(f"embedder {who} returned non-finite values (nan or inf) for {what}; check the model's weights and dtype")
    return x


class Embedder:
    """Base class: subclasses implement `_embed_images` (and optionally `_embed_texts`); this class adds
    validation, L2 normalisation and an in-memory cache keyed by image content / text."""

    name: str = "embedder"

    def __init__(self) -> None:
        self._image_cache: dict[str, np.ndarray] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    def _embed_images(self, images: list[Image.Image]) -> Any:
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> Any:
        raise NotImplementedError(f"embedder {self.name} embeds images only, so prompt similarity (PS) is not available; "
                                  "use a CLIP embedder (ClipEmbedder / load_embedder('toyworld')) or give CallableEmbedder a text_fn")

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) unit-norm embeddings of `images`; only images not seen before are embedded."""
        images = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
        keys = [hash_image(im) for im in images]
        return self._cached(keys, images, self._image_cache, self._embed_images, "images")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit-norm embeddings of `texts` (NotImplementedError for image-only embedders)."""
        texts = list(texts)
        return self._cached(texts, texts, self._text_cache, self._embed_texts, "texts")

    def _cached(self, keys: list[str], items: list, cache: dict, fn: Callable, what: str) -> np.ndarray:
        todo: dict[str, Any] = {}
        for k, item in zip(keys, items):
            if k not in cache and k not in todo:
                todo[k] = item
        if todo:
            out = normalise_rows(check_embeddings(fn(list(todo.values())), len(todo), self.name, what))  # (M, D)
            cache.update(zip(todo, out))
        if not keys:
            return np.zeros((0, 0))
        return np.stack([cache[k] for k in keys])  # (N, D)

    def clear_cache(self) -> None:
        self._image_cache.clear()
        self._text_cache.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class CallableEmbedder(Embedder):
    """Any function images -> (N, D) array (numpy or torch); optionally texts -> (N, D) for prompt similarity."""

    def __init__(self, fn: Callable[[list[Image.Image]], Any], text_fn: Callable[[list[str]], Any] | None = None, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"CallableEmbedder needs a callable images -> (N, D) embeddings, got {type(fn).__name__}")
        self.fn, self.text_fn = fn, text_fn
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)

    def _embed_images(self, images: list[Image.Image]) -> Any:
        return self.fn(images)

    def _embed_texts(self, texts: list[str]) -> Any:
        if self.text_fn is None:
            return super()._embed_texts(texts)
        return self.text_fn(texts)


class CachedEmbedder(Embedder):
    """Adds the cache (and shape checks) to any object with `embed_images` (and maybe `embed_texts`)."""

    def __init__(self, inner: Any):
        super().__init__()
        if not hasattr(inner, "embed_images"):
            raise TypeError(f"CachedEmbedder wraps objects with an embed_images method; {type(inner).__name__} has none")
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def _embed_images(self, images: list[Image.Image]) -> Any:
        return self.inner.embed_images(images)

    def _embed_texts(self, texts: list[str]) -> Any:
        if not hasattr(self.inner, "embed_texts"):
            return super()._embed_texts(texts)
        return self.inner.embed_texts(texts)


def _features(out: Any, kind: str) -> torch.Tensor:
    """Projected features from get_{image,text}_features: a tensor in transformers 4, a model output in 5."""
    if torch.is_tensor(out):
        return out
    for attr in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    raise TypeError(f"get_{kind}_features returned {type(out).__name__} without {kind}_embeds or pooler_output; "
                    "this transformers version is not supported by ClipEmbedder")


def _looks_like_path(spec: str) -> bool:
    # hub ids are "name" or "owner/name"; anything else with a separator is meant as a folder
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


class ClipEmbedder(Embedder):
    """A transformers CLIP model (local folder or hub id), batched and device-aware."""

    def __init__(self, path_or_id: str | Path, device: str | torch.device | None = None, batch_size: int = 64, dtype: torch.dtype | None = None):
        super().__init__()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        spec = str(path_or_id)
        if not Path(spec).expanduser().exists() and (isinstance(path_or_id, Path) or _looks_like_path(spec)):
            raise FileNotFoundError(f"CLIP folder {spec} does not exist; pass a folder with config.json, model.safetensors, "
                                    "tokenizer and preprocessor_config.json, a hub id such as openai/clip-vit-base-patch32, or 'toyworld'")
        spec = str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec
        self.name, self.batch_size = spec, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            # float32 unless asked: scores are compared across runs, so the embedding should not depend on precision
            self.model = CLIPModel.from_pretrained(spec).to(self.device, dtype or torch.float32).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.processor = CLIPImageProcessor.from_pretrained(spec)
        except OSError as e:
            raise OSError(f"could not load CLIP {spec!r} ({e}). A hub id needs network access or a filled Hugging Face cache "
                          "(HF_HUB_OFFLINE=1 forbids downloads); otherwise pass a local CLIP folder or 'toyworld'") from e
        # some tokenizers report a huge sentinel model_max_length; the position table is the real limit
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @classmethod
    def toyworld(cls, device: str | torch.device | None = None, batch_size: int = 64) -> ClipEmbedder:
        """The toy world's CLIP (32 px images), from $CATLAB_TOYWORLD_DIR or the shipped assets."""
        from .toyworld.assets import toyworld_path

        return cls(toyworld_path("clip"), device=device, batch_size=batch_size)

    @torch.no_grad()
    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=images[i : i + self.batch_size], return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
            px = px.to(self.device, self.model.dtype)
            out.append(_features(self.model.get_image_features(pixel_values=px), "image").float().cpu())  # (B, D)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)  # (B, L)
            out.append(_features(self.model.get_text_features(input_ids=ids, attention_mask=mask), "text").float().cpu())  # (B, D)
        return torch.cat(out).numpy()


@functools.lru_cache(maxsize=4)
def _load_clip(spec: str, device: str | None, batch_size: int) -> ClipEmbedder:
    # one instance per resolved path and process, so its cache survives repeated evaluate() calls in a notebook
    return ClipEmbedder(spec, device=device, batch_size=batch_size)


def load_embedder(spec: Any = "toyworld", device: str | None = None, batch_size: int = 64) -> Embedder:
    """An Embedder from 'toyworld', a CLIP folder or hub id, a callable images -> (N, D), or an embedder object.

    CLIPs are loaded once per process (`load_embedder.cache_clear()` drops them); Embedder instances are
    returned as they are, so their cache is kept.
    """
    if isinstance(spec, Embedder):
        return spec
    if hasattr(spec, "embed_images"):
        return CachedEmbedder(spec)
    if isinstance(spec, (str, Path)):
        if str(spec) == "toyworld":
            from .toyworld.assets import toyworld_path

            spec = toyworld_path("clip")  # resolved now: $CATLAB_TOYWORLD_DIR may change between calls
        local = Path(spec).expanduser()
        return _load_clip(str(local.resolve()) if local.exists() else str(spec), None if device is None else str(device), batch_size)
    if callable(spec):
        return CallableEmbedder(spec)
    raise TypeError(f"cannot make an embedder from {type(spec).__name__}; pass 'toyworld', a CLIP folder or hub id, "
                    "a function images -> (N, D) array, or an Embedder")


load_embedder.cache_clear = _load_clip.cache_clear  # type: ignore[attr-defined]
