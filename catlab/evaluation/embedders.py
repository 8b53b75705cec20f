"""The pretrained image and text embedders (CLIP, DINO) behind one interface (`catlab.evaluation.embedder_base`, with
its content-keyed cache), and `load_embedder`, which picks one from a name or folder.

Every score in `catlab.evaluation.metrics` is a function of L2-normalised embeddings, so anything that maps images to
vectors can stand in for CLIP: the toy world's tiny CLIP, any transformers CLIP (the CAT authors used
openai/clip-vit-base-patch32), a self-supervised ViT for DreamBooth's DINO score (`DinoEmbedder`,
facebook/dino-vits16), or a plain function. Embeddings are cached by image content, so scoring the
same images again (a second `evaluate`, a re-summary in a notebook) costs nothing. Every embedder has a
`backbone`: the model family, size and source that tables name next to the numbers it produced.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catlab.evaluation.embedder_base import (  # noqa: F401  (the interface, importable from here as before)
    CachedEmbedder,
    CallableEmbedder,
    Embedder,
    check_embeddings,
    hash_image,
)


def _features(out: Any, kind: str) -> torch.Tensor:
    """Projected features from get_{image,text}_features: a tensor in transformers 4, a model output in 5."""
    if torch.is_tensor(out):
        return out
    for attr in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    raise TypeError(
        f"get_{kind}_features returned {type(out).__name__} without {kind}_embeds or pooler_output; "
        "this transformers version is not supported by ClipEmbedder"
    )


def _looks_like_path(spec: str) -> bool:
    # hub ids are "name" or "owner/name"; anything else with a separator is meant as a folder
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _resolve(path_or_id: str | Path, what: str, hint: str) -> str:
    """An existing folder as its expanded path, or a hub id; a path to nothing is a FileNotFoundError."""
    spec = str(path_or_id)
    local = Path(spec).expanduser()
    if not local.exists() and (isinstance(path_or_id, Path) or _looks_like_path(spec)):
        raise FileNotFoundError(f"{what} folder {spec} does not exist; {hint}")
    return str(local) if local.exists() else spec


def _local_model_type(spec: str) -> str | None:
    """model_type from a local folder's config.json (None for hub ids, folders without one, unreadable files)."""
    config = Path(spec) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


_VIT_SIZES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g"}


def vit_name(hidden_size: int, patch_size: int) -> str:
    """The usual name of a ViT from its width and patch size: 'ViT-S/16', 'ViT-B/32'; other widths spelt out."""
    size = _VIT_SIZES.get(int(hidden_size))
    return f"ViT-{size}/{patch_size}" if size else f"ViT (width {hidden_size}, patch {patch_size})"


_OFFLINE_HINT = (
    "A hub id needs network access or a filled Hugging Face cache (HF_HUB_OFFLINE=1 forbids downloads); "
    "otherwise pass a local folder"
)


class ClipEmbedder(Embedder):
    """A transformers CLIP model (local folder or hub id), batched and device-aware."""

    def __init__(
        self,
        path_or_id: str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        spec = _resolve(
            path_or_id,
            "CLIP",
            "pass a folder with config.json, model.safetensors, tokenizer and preprocessor_config.json, "
            "a hub id such as openai/clip-vit-base-patch32, or 'toyworld'",
        )
        model_type = _local_model_type(spec)
        if model_type not in (None, "clip"):
            raise ValueError(
                f"{spec} holds a {model_type!r} model, not a CLIP (config.json model_type 'clip')"
                + (
                    "; a ViT / DINO folder goes to dino=, not to a CLIP argument"
                    if model_type in DINO_MODEL_TYPES
                    else ""
                )
            )
        self.name, self.batch_size = spec, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            # float32 unless asked: scores are compared across runs, so the embedding should not depend on precision
            self.model = (
                CLIPModel.from_pretrained(spec, use_safetensors=True).to(self.device, dtype or torch.float32).eval()
            )
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.processor = CLIPImageProcessor.from_pretrained(spec)
        except OSError as e:
            raise OSError(f"could not load CLIP {spec!r} ({e}). {_OFFLINE_HINT} or 'toyworld'") from e
        # some tokenizers report a huge sentinel model_max_length; the position table is the real limit
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @property
    def backbone(self) -> str:
        vision = self.model.config.vision_config
        return f"CLIP {vit_name(vision.hidden_size, vision.patch_size)} ({self.name})"

    @classmethod
    def toyworld(cls, device: str | torch.device | None = None, batch_size: int = 64) -> ClipEmbedder:
        """The toy world's CLIP (32 px images), from $CATLAB_TOYWORLD_DIR or the shipped assets."""
        from catlab.toyworld.assets import toyworld_path

        return cls(toyworld_path("clip"), device=device, batch_size=batch_size)

    @torch.no_grad()
    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=images[i : i + self.batch_size], return_tensors="pt")[
                "pixel_values"
            ]  # (B, 3, H, W)
            px = px.to(self.device, self.model.dtype)
            out.append(_features(self.model.get_image_features(pixel_values=px), "image").float().cpu())  # (B, D)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)  # (B, L)
            out.append(
                _features(self.model.get_text_features(input_ids=ids, attention_mask=mask), "text").float().cpu()
            )  # (B, D)
        return torch.cat(out).numpy()


DINO_MODEL_TYPES = ("vit", "dinov2", "dinov2_with_registers")  # transformers model_type values DinoEmbedder loads
DINO_HUB_ID = "facebook/dino-vits16"  # DreamBooth's DINO: ViT-S/16 trained with DINO (Caron et al. 2021)


class DinoEmbedder(Embedder):
    """The CLS embedding of a self-supervised ViT, for DreamBooth's DINO score (ViT-S/16: facebook/dino-vits16).

    Any transformers ViTModel or Dinov2Model folder or hub id with its image processor (preprocessor_config.json).
    The embedding is the CLS token after the final layer norm (`last_hidden_state[:, 0]`), which is what DINO's
    own ViT returns; the ViT pooler (a randomly initialised dense + tanh in DINO checkpoints) is not used.
    Images only: `embed_texts` raises NotImplementedError.
    """

    def __init__(
        self,
        path_or_id: str | Path = DINO_HUB_ID,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        spec = _resolve(
            path_or_id,
            "DINO",
            "pass a folder with config.json, model.safetensors and preprocessor_config.json of a "
            f"transformers ViTModel or Dinov2Model, or a hub id such as {DINO_HUB_ID}",
        )
        self.name, self.batch_size = spec, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        usable = (
            f"the DINO score needs a transformers ViTModel or Dinov2Model (config.json model_type "
            f"{' / '.join(DINO_MODEL_TYPES)}) with its image processor, such as {DINO_HUB_ID}"
        )
        try:
            self.config = AutoConfig.from_pretrained(spec)
        except (OSError, ValueError, KeyError) as e:
            raise OSError(
                f"{spec!r} holds no usable DINO model: its config could not be read ({e}). {usable}. {_OFFLINE_HINT}"
            ) from e
        if self.config.model_type not in DINO_MODEL_TYPES:
            clip = (
                "; a CLIP folder goes to embedder= or clip=, not to dino=" if self.config.model_type == "clip" else ""
            )
            raise ValueError(f"{spec!r} holds a {self.config.model_type!r} model, not a ViT: {usable}{clip}")
        try:
            extra = {"add_pooling_layer": False} if self.config.model_type == "vit" else {}
            self.model = (
                AutoModel.from_pretrained(spec, use_safetensors=True, **extra)
                .to(self.device, dtype or torch.float32)
                .eval()
            )
        except (OSError, ValueError) as e:
            raise OSError(
                f"{spec!r} holds no usable DINO model: the {self.config.model_type} weights could not be loaded ({e}). "
                f"{usable}. {_OFFLINE_HINT}"
            ) from e
        try:
            self.processor = AutoImageProcessor.from_pretrained(spec)
        except (OSError, ValueError, KeyError) as e:
            raise OSError(
                f"{spec!r} has no image processor ({e}); save the model's processor beside it "
                "(AutoImageProcessor.from_pretrained(hub_id).save_pretrained(folder) writes preprocessor_config.json)"
            ) from e

    @property
    def backbone(self) -> str:
        family = (
            "DINOv2 "
            if self.config.model_type.startswith("dinov2")
            else ("DINO " if "dino" in self.name.lower() else "")
        )
        return f"{family}{vit_name(self.config.hidden_size, self.config.patch_size)} ({self.name})"

    @torch.no_grad()
    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=images[i : i + self.batch_size], return_tensors="pt")[
                "pixel_values"
            ]  # (B, 3, H, W)
            hidden = self.model(
                pixel_values=px.to(self.device, self.model.dtype)
            ).last_hidden_state  # (B, 1 + patches, D)
            out.append(hidden[:, 0].float().cpu())  # (B, D): the CLS token
        return torch.cat(out).numpy()


EMBEDDER_KINDS = ("auto", "clip", "dino")


def _model_kind(spec: str) -> str:
    """'dino' for a local ViT / DINOv2 folder or a hub id that names dino, else 'clip'."""
    if Path(spec).exists():
        return "dino" if _local_model_type(spec) in DINO_MODEL_TYPES else "clip"
    return "dino" if "dino" in spec.lower() else "clip"


@functools.lru_cache(maxsize=8)
def _load_model(kind: str, spec: str, device: str | None, batch_size: int) -> Embedder:
    # one instance per kind, resolved path and process, so its cache survives repeated evaluate() calls in a notebook
    cls = DinoEmbedder if kind == "dino" else ClipEmbedder
    return cls(spec, device=device, batch_size=batch_size)


def _load_clip(spec: str, device: str | None, batch_size: int) -> Embedder:
    return _load_model("clip", spec, device, batch_size)


def load_embedder(
    spec: Any = "toyworld", device: str | None = None, batch_size: int = 64, kind: str = "auto"
) -> Embedder:
    """An Embedder from 'toyworld', a CLIP or DINO folder or hub id, a callable images -> (N, D), or an embedder object.

    kind: 'auto' (a folder whose config.json is a ViT / DINOv2, or a hub id containing 'dino', loads a
    `DinoEmbedder`; anything else a `ClipEmbedder`), 'clip' or 'dino' to insist. Models are loaded once per
    process (`load_embedder.cache_clear()` drops them); Embedder instances are returned as they are, so their
    cache is kept.
    """
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"load_embedder: kind must be one of {', '.join(EMBEDDER_KINDS)}, got {kind!r}")
    if isinstance(spec, Embedder):
        return spec
    if hasattr(spec, "embed_images"):
        return CachedEmbedder(spec)
    if isinstance(spec, (str, Path)):
        if str(spec) == "toyworld":
            if kind == "dino":
                raise ValueError(
                    f"the toy world has a CLIP, not a DINO model; pass a ViT / DINOv2 folder or hub id ({DINO_HUB_ID})"
                )
            from catlab.toyworld.assets import toyworld_path

            spec = toyworld_path("clip")  # resolved now: $CATLAB_TOYWORLD_DIR may change between calls
        local = Path(spec).expanduser()
        resolved = str(local.resolve()) if local.exists() else str(spec)
        return _load_model(
            _model_kind(resolved) if kind == "auto" else kind,
            resolved,
            None if device is None else str(device),
            batch_size,
        )
    if callable(spec):
        return CallableEmbedder(spec)
    raise TypeError(
        f"cannot make an embedder from {type(spec).__name__}; pass 'toyworld', a CLIP or DINO folder or hub id, "
        "a function images -> (N, D) array, or an Embedder"
    )


load_embedder.cache_clear = _load_model.cache_clear  # type: ignore[attr-defined]
