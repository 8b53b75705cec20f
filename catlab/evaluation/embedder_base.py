"""The interface every embedder implements (`Embedder`), a plain function wrapped as one (`CallableEmbedder`), and the
cache keyed by image content (`CachedEmbedder`) that makes scoring the same images twice cost nothing. The pretrained
models behind it (CLIP, DINO) are in `catlab.evaluation.embedders`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from catlab.evaluation.metrics import normalise_rows


def hash_image(image: Image.Image) -> str:
    """Content key of an image: sha1 of its mode, size and pixel bytes (file names and metadata do not matter)."""
    h = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def check_embeddings(x: Any, n: int, who: str, what: str = "images") -> np.ndarray:
    """`x` as a float array of shape (n, D), or a ValueError that names the embedder and both shapes."""
    if hasattr(x, "detach"):  # torch tensors, possibly on an accelerator
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(
            f"embedder {who} returned shape {tuple(x.shape)} for {n} {what}; expected a 2-D array of shape "
            f"({n}, D), one row per input. Check that the function embeds a whole list at once and does not squeeze or flatten."
        )
    if not np.isfinite(x).all():
        raise ValueError(
            f"embedder {who} returned non-finite values (nan or inf) for {what}; check the model's weights and dtype"
        )
    return x


class Embedder:
    """Base class: subclasses implement `_embed_images` (and optionally `_embed_texts`); this class adds
    validation, L2 normalisation and an in-memory cache keyed by image content / text."""

    name: str = "embedder"

    @property
    def backbone(self) -> str:
        """What produced the embeddings, for tables and reports (e.g. 'CLIP ViT-B/32 (openai/clip-vit-base-patch32)')."""
        return self.name

    @property
    def has_text(self) -> bool:
        """Whether `embed_texts` can work (a text tower or a text function)."""
        return type(self)._embed_texts is not Embedder._embed_texts

    def __init__(self) -> None:
        self._image_cache: dict[str, np.ndarray] = {}
        self._text_cache: dict[str, np.ndarray] = {}

    def _embed_images(self, images: list[Image.Image]) -> Any:
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> Any:
        raise NotImplementedError(
            f"embedder {self.name} embeds images only, so prompt similarity (PS) is not available; "
            "use a CLIP embedder (ClipEmbedder / load_embedder('toyworld')) or give CallableEmbedder a text_fn"
        )

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

    def __init__(
        self,
        fn: Callable[[list[Image.Image]], Any],
        text_fn: Callable[[list[str]], Any] | None = None,
        name: str | None = None,
    ):
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

    @property
    def has_text(self) -> bool:
        return self.text_fn is not None


class CachedEmbedder(Embedder):
    """Adds the cache (and shape checks) to any object with `embed_images` (and maybe `embed_texts`)."""

    def __init__(self, inner: Any):
        super().__init__()
        if not hasattr(inner, "embed_images"):
            raise TypeError(
                f"CachedEmbedder wraps objects with an embed_images method; {type(inner).__name__} has none"
            )
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def _embed_images(self, images: list[Image.Image]) -> Any:
        return self.inner.embed_images(images)

    def _embed_texts(self, texts: list[str]) -> Any:
        if not hasattr(self.inner, "embed_texts"):
            return super()._embed_texts(texts)
        return self.inner.embed_texts(texts)

    @property
    def backbone(self) -> str:
        return str(getattr(self.inner, "backbone", self.name))

    @property
    def has_text(self) -> bool:
        return hasattr(self.inner, "embed_texts")
