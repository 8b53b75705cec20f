"""LoRA adapters: inject them with peft, save them in the diffusers format and in kohya's (for the webuis), load them,
switch them off for the exact base model, and combine several.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from catlab.models.trigger_embedding import (
    TRIGGER_EMBEDDING_NAME,
    TriggerEmbedding,
    load_trigger_embedding,
    save_trigger_embedding,
    set_active_trigger_embeddings,
    trigger_embedding_of,
)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
WEBUI_WEIGHT_NAME = "lora_webui.safetensors"  # the same adapter in kohya's format, for AUTOMATIC1111 / Forge / ComfyUI
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection, as the CAT authors


class AdapterMismatchError(ValueError):
    """A LoRA file whose layers or shapes do not fit the base model."""


def _linear_suffixes(model: torch.nn.Module) -> set[str]:
    return {
        name.split(".")[-1] if not name.endswith(".0") else ".".join(name.split(".")[-2:])
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def add_lora(
    model: torch.nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    adapter_name: str = "default",
) -> int:
    """Inject a fresh LoRA (B = 0, so the model is unchanged) into `model`; returns the trainable parameter count."""
    from peft import LoraConfig

    names = [n for n, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
            f"linear layers it has end in: {sorted(_linear_suffixes(model))[:20]}"
        )
    model.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights=True,  # Kaiming A, zero B (Hu et al. 2021, arXiv 2106.09685): starts as the base model
        target_modules=list(target_modules),
    )
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(
            f"{type(model).__name__} already has an adapter named {adapter_name!r}; pick another adapter_name"
        )
    try:
        model.add_adapter(config, adapter_name=adapter_name)
    except ValueError as e:
        if "version of PEFT" not in str(e):
            raise
        # transformers' own PEFT integration (text encoders) can ask for a newer peft than the newest released;
        # peft's injection makes the same LoRA layers, as diffusers' LoRA loader does for text encoders
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, model, adapter_name=adapter_name)
        model.peft_config = {**getattr(model, "peft_config", {}), adapter_name: config}
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` as the exact base model inside the block (no second copy of the weights); restores the previous state."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    # peft's per-layer switch, on exactly the layers that are on now. CAT calls this every step, and diffusers'
    # model-level switch walks the module tree twice each time (its cost: docs/results.md, "Step cost")
    switched = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    embeddings = [(m, m.active) for m in model.modules() if isinstance(m, TriggerEmbedding) and m.active]
    for layer in switched:
        layer.enable_adapters(False)
    for emb, _ in embeddings:  # trained trigger vectors are part of the adapter (models.trigger_embedding)
        emb.active = []
    try:
        yield
    finally:
        for layer in switched:
            layer.enable_adapters(True)
        for emb, active in embeddings:
            emb.active = active


def save_lora(
    pipe, out_dir: str | Path, adapter_name: str = "default", metadata: dict | None = None, overwrite: bool = False
) -> Path:
    """Write the adapter twice, atomically (refuses to overwrite): diffusers/peft-format `pytorch_lora_weights.safetensors`
    and kohya-format `lora_webui.safetensors` (AUTOMATIC1111, Forge, ComfyUI), both with `metadata` in their header."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    if (out / LORA_WEIGHT_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out / LORA_WEIGHT_NAME} exists; pass overwrite=True or choose another folder")
    unet_layers = get_peft_model_state_dict(
        pipe.unet, adapter_name=adapter_name
    )  # peft keys: diffusers loads them as they are, conv LoRA included
    te_layers, te_meta = None, None
    te = pipe.text_encoder
    if getattr(te, "peft_config", None) and adapter_name in te.peft_config:
        te_layers = get_peft_model_state_dict(te, adapter_name=adapter_name)
        te_meta = _lora_config_header(te.peft_config[adapter_name])
    meta = _lora_config_header(pipe.unet.peft_config[adapter_name])
    header = adapter_metadata(pipe, adapter_name, metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out.parent))
    try:
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=te_layers,
            unet_lora_adapter_metadata=meta,
            # without it diffusers builds the text encoder's LoraConfig from an empty dict and peft refuses it
            text_encoder_lora_adapter_metadata=te_meta,
            safe_serialization=True,
        )
        with safe_open(
            tmp / LORA_WEIGHT_NAME, framework="pt"
        ) as f:  # diffusers' own header (format, lora_adapter_metadata) + ours
            own = f.metadata() or {}
        save_file(load_file(tmp / LORA_WEIGHT_NAME), tmp / LORA_WEIGHT_NAME, metadata={**header, **own})
        save_file(
            webui_state_dict(pipe, adapter_name), tmp / WEBUI_WEIGHT_NAME, metadata={**header, **_kohya_header(header)}
        )
        save_trigger_embedding(te, pipe.tokenizer, tmp, adapter_name)  # with trigger_embedding_lr only
        if metadata:
            (tmp / "catlab_adapter.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            f.replace(out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / LORA_WEIGHT_NAME


def _lora_config_header(cfg) -> dict:
    return {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}


def webui_state_dict(pipe, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter in kohya's format (`lora_unet_*` / `lora_te_*` modules with `lora_down`, `lora_up` and `alpha`), which
    AUTOMATIC1111, Forge and ComfyUI load. Keys come from diffusers' `convert_state_dict_to_kohya`; each `.alpha` is the
    layer's own lora_alpha (diffusers writes the rank there, which would rescale the adapter by rank / lora_alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    def sd1_name(
        prefix: str, name: str
    ) -> str:  # transformers 5 dropped CLIPTextModel's `text_model.`; the webuis expect it
        return f"text_model.{name}" if prefix == "text_encoder" and not name.startswith("text_model.") else name

    peft_sd, alphas = {}, {}
    for prefix, kohya_prefix, model in (
        ("unet", "lora_unet_", pipe.unet),
        ("text_encoder", "lora_te_", pipe.text_encoder),
    ):
        if adapter_name not in getattr(model, "peft_config", {}):
            continue
        if getattr(model.peft_config[adapter_name], "use_rslora", False):
            raise ValueError("rsLoRA scaling (alpha / sqrt(r)) has no kohya equivalent; save with use_rslora=False")
        layers = get_peft_model_state_dict(model, adapter_name=adapter_name)
        peft_sd.update({f"{prefix}.{sd1_name(prefix, k)}": v for k, v in layers.items()})
        alphas.update(
            {
                kohya_prefix + sd1_name(prefix, name).replace(".", "_"): float(m.lora_alpha[adapter_name])
                for name, m in model.named_modules()
                if isinstance(m, LoraLayer) and adapter_name in m.lora_alpha
            }
        )
    # SD 1.x has one text encoder: kohya and the webuis spell it lora_te_ (diffusers' converter writes SDXL's lora_te1_)
    kohya = {
        k.replace("lora_te1_", "lora_te_", 1) if k.startswith("lora_te1_") else k: v
        for k, v in convert_state_dict_to_kohya(peft_sd).items()
    }
    for key in [k for k in kohya if k.endswith(".alpha")]:
        module = key[: -len(".alpha")]
        if module not in alphas:
            raise ValueError(f"kohya conversion produced module {module!r}, which is no LoRA layer of the pipeline")
        kohya[key] = torch.tensor(alphas[module], dtype=torch.float32)
    return {k: v.contiguous() for k, v in kohya.items()}


def adapter_metadata(pipe, adapter_name: str = "default", extra: dict | None = None) -> dict[str, str]:
    """The safetensors header (str -> str) both adapter files carry: rank, alpha, targets, catlab version and `extra`
    (trigger, class word, base model, regime, cat_lambda, steps from a training run)."""
    from catlab import __version__

    cfg = pipe.unet.peft_config[adapter_name]
    meta = {
        "catlab_version": __version__,
        "rank": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(cfg.target_modules),
    }
    te_cfg = getattr(pipe.text_encoder, "peft_config", {}).get(adapter_name)
    if te_cfg is not None:
        meta["text_encoder_target_modules"] = sorted(te_cfg.target_modules)
    meta.update(extra or {})
    return {str(k): _header_value(v) for k, v in meta.items()}


def _header_value(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, set)) and all(isinstance(x, str) for x in v):
        return ",".join(v)
    return json.dumps(v, default=str)


def _kohya_header(header: dict[str, str]) -> dict[str, str]:
    """The kohya (sd-scripts) keys that the webuis show in their LoRA info panels."""
    kohya = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": header["rank"],
        "ss_network_alpha": header["lora_alpha"],
    }
    for ours, theirs in (("base_model", "ss_sd_model_name"), ("steps", "ss_max_train_steps")):
        if ours in header:
            kohya[theirs] = header[ours]
    return kohya


def load_lora(pipe, path: str | Path, adapter_name: str = "default", scale: float = 1.0) -> str:
    """Load a diffusers-format LoRA (folder or .safetensors file) into `pipe` and make it the active adapter."""
    p = Path(path)
    if p.is_dir():
        if not (p / LORA_WEIGHT_NAME).is_file():
            raise FileNotFoundError(
                f"no {LORA_WEIGHT_NAME} in {p}; pass the folder written by catlab train or save_lora"
            )
        kwargs = {"weight_name": LORA_WEIGHT_NAME}
        src = str(p)
    elif p.is_file():
        src, kwargs = str(p.parent), {"weight_name": p.name}
    else:
        raise FileNotFoundError(f"adapter {p} does not exist")
    if adapter_name in getattr(pipe.unet, "peft_config", {}):
        pipe.delete_adapters([adapter_name])
    if trigger_embedding_of(pipe.text_encoder) is not None:
        trigger_embedding_of(pipe.text_encoder).remove(adapter_name)
    from catlab.notices import expected_notices_dropped

    try:
        with expected_notices_dropped():  # a UNet-only adapter is normal: no notice about the text encoder
            pipe.load_lora_weights(src, adapter_name=adapter_name, **kwargs)
    except (RuntimeError, ValueError, KeyError) as e:
        raise AdapterMismatchError(
            f"the LoRA in {p} does not fit this base model ({type(pipe.unet).__name__}, "
            f"cross_attention_dim={pipe.unet.config.cross_attention_dim}): was it trained on another "
            f"base model? Details: {str(e)[:400]}"
        ) from e
    if not any(adapter_name in getattr(m, "peft_config", {}) for m in (pipe.unet, pipe.text_encoder)):
        raise AdapterMismatchError(f"no layer of {p} matched the base model; it was trained for another architecture")
    trigger_file = (p if p.is_dir() else p.parent) / TRIGGER_EMBEDDING_NAME
    if trigger_file.is_file() and (p.is_dir() or p.name == LORA_WEIGHT_NAME):
        try:
            load_trigger_embedding(pipe.text_encoder, pipe.tokenizer, trigger_file, adapter_name)
        except ValueError as e:
            raise AdapterMismatchError(str(e)) from e
    set_active_adapters(pipe, [adapter_name], [scale])
    return adapter_name


def set_active_adapters(pipe, names: Sequence[str] | None, weights: Sequence[float] | None = None) -> None:
    """Activate adapters with weights (`set_adapters`); None or [] = the base model (adapters disabled)."""
    if not names:
        if getattr(pipe.unet, "peft_config", None):
            pipe.disable_lora()
        set_active_trigger_embeddings(pipe.text_encoder, None)
        return
    known = set(getattr(pipe.unet, "peft_config", {}))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"adapter(s) {unknown} are not loaded; loaded: {sorted(known)}. Load them with load_lora first")
    pipe.enable_lora()
    pipe.set_adapters(list(names), adapter_weights=list(weights) if weights is not None else None)
    # a trigger's vector is a word, not a weight: an adapter that is on (any weight above 0) brings it whole
    on = [n for k, n in enumerate(names) if weights is None or weights[k] > 0]
    set_active_trigger_embeddings(pipe.text_encoder, on)
