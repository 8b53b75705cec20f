"""Base models: load any diffusers Stable Diffusion pipeline by name or folder (the toy world is just another one),
with the sampling defaults and native resolution that suit it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SD_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5}  # diffusers' SD 1.5 defaults, used by the authors
SAMPLING_FILE = "catlab_sampling.json"  # optional per-model sampling defaults beside model_index.json


def resolve_base(name_or_path: str) -> str:
    """'toyworld' -> the shipped pipeline folder; an existing folder stays; anything else is taken as a hub id."""
    if name_or_path == "toyworld":
        from catlab.toyworld.assets import toyworld_path

        return str(toyworld_path("pipeline"))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise FileNotFoundError(f"{p} is not a diffusers pipeline folder (no model_index.json); "
                                    "point base_model at a folder written by `save_pretrained`, or use 'toyworld'")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"base model {name_or_path!r} is neither an existing folder nor a hub id like "
                                "'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    return name_or_path


def load_base(name_or_path: str = "toyworld", device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a Stable Diffusion pipeline ('toyworld', a local folder, or a hub id) on `device`."""
    from diffusers import StableDiffusionPipeline

    path = resolve_base(name_or_path)
    # safetensors only: a checkpoint that has only pickled .bin weights fails here instead of being unpickled
    kwargs = {"safety_checker": None, "requires_safety_checker": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
    except OSError as e:
        hint = " (the machine is offline or HF_HUB_OFFLINE=1: download it elsewhere and pass its folder)" if not Path(path).exists() else ""
        raise OSError(f"could not load base model {name_or_path!r}{hint}: {e}") from e
    if dtype is None and pipe.text_encoder is not None and pipe.text_encoder.dtype != pipe.unet.dtype:
        # transformers 5 loads a model in the dtype it was saved in, diffusers in fp32: a folder saved in fp16 gave an
        # fp16 text encoder beside an fp32 UNet, and sampling failed ("mat1 and mat2 must have the same dtype")
        pipe.text_encoder.to(pipe.unet.dtype)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    pipe.catlab_sampling = sampling_defaults_for(path)
    return pipe


def configured_resolution(name_or_path: str) -> int | None:
    """The native resolution from the pipeline's config files alone (no weights are loaded): a local folder, or a hub
    id already in the local cache; None when they are not at hand."""
    path = resolve_base(name_or_path)
    configs = {}
    for part in ("unet", "vae"):
        f = Path(path) / part / "config.json"
        if not f.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, f"{part}/config.json") if not Path(path).exists() else None
            if not isinstance(cached, str):
                return None
            f = Path(cached)
        configs[part] = json.loads(f.read_text())
    return int(configs["unet"]["sample_size"] * 2 ** (len(configs["vae"]["block_out_channels"]) - 1))  # diffusers' vae_scale_factor


def sampling_defaults_for(path: str) -> dict:
    f = Path(path) / SAMPLING_FILE
    if f.is_file():
        return {**SD_DEFAULTS, **json.loads(f.read_text())}
    return dict(SD_DEFAULTS)


def sampling_defaults(pipe) -> dict:
    """Steps, guidance and resolution that suit this base model (the toy world wants little guidance)."""
    d = dict(getattr(pipe, "catlab_sampling", SD_DEFAULTS))
    d.setdefault("resolution", native_resolution(pipe))
    return d


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
