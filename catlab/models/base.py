"""Base models: load any diffusers Stable Diffusion pipeline by name, folder or single .safetensors checkpoint (the toy
world is just another one), with the sampling defaults, precision and native resolution that suit it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SD_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5}  # diffusers' SD 1.5 defaults, used by the authors
SAMPLING_FILE = "catlab_sampling.json"  # optional per-model sampling defaults beside model_index.json
SINGLE_FILE_SUFFIX = ".safetensors"  # one-file checkpoints as civitai and the webuis share them
# pickled weights: unpickling runs whatever code the file holds, so catlab never loads one
PICKLED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def resolve_base(name_or_path: str) -> str:
    """'toyworld' -> the shipped pipeline folder; an existing diffusers folder or .safetensors file stays; anything
    else is taken as a hub id."""
    if name_or_path == "toyworld":
        from catlab.toyworld.assets import toyworld_path

        return str(toyworld_path("pipeline"))
    p = Path(name_or_path).expanduser()
    if p.suffix.lower() in (SINGLE_FILE_SUFFIX, *PICKLED_SUFFIXES):
        return str(check_single_file(p, "base model"))
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{p} is not a diffusers pipeline folder (no model_index.json); "
                "point base_model at a folder written by `save_pretrained`, a .safetensors "
                "checkpoint, or use 'toyworld'"
            )
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise FileNotFoundError(
            f"base model {name_or_path!r} is neither an existing folder nor a hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'"
        )
    return name_or_path


def check_single_file(p: Path, what: str) -> Path:
    """`p` if it is an existing .safetensors file; a clear error for a pickled checkpoint or a missing file."""
    if p.suffix.lower() in PICKLED_SUFFIXES:
        raise ValueError(
            f"{what} {p} is a pickled checkpoint ({p.suffix}); catlab loads no pickle, since unpickling "
            "runs any code the file holds. Download the model's .safetensors release instead, or convert "
            "this file once where you trust it (e.g. diffusers' "
            "scripts/convert_original_stable_diffusion_to_diffusers.py) and pass the folder it writes"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} {p}: no such file; pass an existing .safetensors checkpoint, a diffusers folder or a hub id"
        )
    return p


def is_single_file(path: str) -> bool:
    """Whether a resolved base model is one checkpoint file rather than a diffusers folder or hub id."""
    return Path(path).suffix.lower() == SINGLE_FILE_SUFFIX


def load_base(
    name_or_path: str = "toyworld",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    variant: str | None = None,
    revision: str | None = None,
    vae: str | None = None,
    config: str | None = None,
):
    """Load a Stable Diffusion pipeline ('toyworld', a local folder, a hub id, or one .safetensors checkpoint) on
    `device`, in `dtype` (None: as diffusers loads it, fp32). variant ('fp16') and revision pick the hub's files;
    vae replaces the VAE (a folder, hub id or .safetensors file); config is the diffusers folder or hub id that
    describes a single-file checkpoint (None: diffusers infers it). For sampling, `load_for_sampling` also picks
    the precision."""
    path = resolve_base(name_or_path)
    kwargs = {"safety_checker": None, "requires_safety_checker": False, **_dtype_kwargs(dtype)}
    if vae is not None:
        kwargs["vae"] = load_vae(vae, dtype, config=config or (None if is_single_file(path) else path))
    try:
        pipe = _load_pipeline(path, kwargs, variant=variant, revision=revision, config=config)
    except OSError as e:
        raise OSError(f"could not load base model {name_or_path!r}{_offline_hint(path, config)}: {e}") from e
    if dtype is None and pipe.text_encoder is not None and pipe.text_encoder.dtype != pipe.unet.dtype:
        # transformers 5 loads a model in the dtype it was saved in, diffusers in fp32: a folder saved in fp16 gave an
        # fp16 text encoder beside an fp32 UNet, and sampling failed ("mat1 and mat2 must have the same dtype")
        pipe.text_encoder.to(pipe.unet.dtype)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def _load_pipeline(path: str, kwargs: dict, *, variant: str | None, revision: str | None, config: str | None):
    """diffusers' own loader for a folder or hub id (safetensors only), or for one checkpoint file."""
    from diffusers import StableDiffusionPipeline

    if not is_single_file(path):
        # safetensors only: a checkpoint that has only pickled .bin weights fails here instead of being unpickled
        return StableDiffusionPipeline.from_pretrained(
            path, use_safetensors=True, variant=variant, revision=revision, **kwargs
        )
    if variant is not None:
        raise ValueError(
            f"variant={variant!r} picks files inside a diffusers folder or hub repository; {path} is one "
            "checkpoint file: leave variant unset"
        )
    pipe = StableDiffusionPipeline.from_single_file(path, config=config, **kwargs)
    pipe.register_to_config(_name_or_path=path)  # from_single_file leaves it unset; sampling and caches key on it
    return pipe


def _dtype_kwargs(dtype: torch.dtype | None) -> dict:
    """How this diffusers takes a dtype: `dtype=` since huggingface/diffusers#14205 (2026), which deprecates
    `torch_dtype=`; the older releases that pyproject allows (0.32 on) know only `torch_dtype=`."""
    if dtype is None:
        return {}
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _offline_hint(path: str, config: str | None) -> str:
    """What to do when loading failed for want of files from the hub."""
    if is_single_file(path):
        return (
            ""
            if config
            else (
                " (diffusers reads a checkpoint file's model configs from the hub; offline, name "
                "a local diffusers folder of the same kind of model: single_file_config in a run "
                "config, config= in load_base)"
            )
        )
    if not Path(path).exists():
        return " (the machine is offline or HF_HUB_OFFLINE=1: download it elsewhere and pass its folder)"
    return ""


def load_vae(vae: str, dtype: torch.dtype | None = None, config: str | None = None):
    """A replacement VAE: a diffusers VAE folder or hub id (stabilityai/sd-vae-ft-mse), a pipeline folder (its
    vae/), or one .safetensors file (described by `config`'s vae/, or as diffusers infers it)."""
    from diffusers import AutoencoderKL

    p = Path(vae).expanduser()
    dtype_kwargs = _dtype_kwargs(dtype)
    try:
        if p.suffix.lower() in (SINGLE_FILE_SUFFIX, *PICKLED_SUFFIXES):
            check_single_file(p, "vae")
            described = {"config": config, "subfolder": "vae"} if config else {}
            return AutoencoderKL.from_single_file(str(p), **described, **dtype_kwargs)
        subfolder = "vae" if (p / "vae" / "config.json").is_file() else None
        return AutoencoderKL.from_pretrained(vae, subfolder=subfolder, use_safetensors=True, **dtype_kwargs)
    except OSError as e:
        raise OSError(
            f"could not load vae {vae!r}: pass a diffusers VAE folder or hub id (e.g. "
            f"stabilityai/sd-vae-ft-mse), a pipeline folder, or a .safetensors file ({e})"
        ) from e


def sampling_device(device: str | torch.device | None = None) -> torch.device:
    """Where to sample: `device` if given, else the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sampling_dtype(device: str | torch.device) -> torch.dtype:
    """The precision to sample in on `device`: half on CUDA (bf16 where the GPU computes it natively, Ampere and
    newer; fp16 on a T4), which halves the weights and activations; fp32 elsewhere, so CPU results do not change."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def enable_vae_slicing(pipe) -> None:
    """On CUDA, decode a batch one image at a time: a 512 px fp32 decode takes about 1 GiB per image in one call."""
    if pipe.device.type == "cuda" and hasattr(pipe.vae, "enable_slicing"):
        pipe.vae.enable_slicing()  # diffusers 0.42 has no pipeline-level enable_vae_slicing any more


def load_for_sampling(name_or_path: str = "toyworld", device: str | torch.device | None = None, **loading):
    """`load_base` for drawing images: on the GPU when there is one (or `device`), in `sampling_dtype`, with VAE
    slicing on CUDA. `loading`: load_base's variant, revision, vae and config."""
    where = sampling_device(device)
    pipe = load_base(name_or_path, device=where, dtype=sampling_dtype(where), **loading)
    enable_vae_slicing(pipe)
    return pipe


def configured_resolution(name_or_path: str) -> int | None:
    """The native resolution from the pipeline's config files alone (no weights are loaded): a local folder, or a hub
    id already in the local cache; None when they are not at hand (a single-file checkpoint)."""
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
    return int(
        configs["unet"]["sample_size"] * 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    )  # diffusers' vae_scale_factor


def sampling_defaults_for(path: str | None) -> dict:
    """Steps and guidance for the model at `path` (a folder or hub id): its catlab_sampling.json over SD_DEFAULTS."""
    f = _sampling_file(path) if path else None
    if f is not None:
        return {**SD_DEFAULTS, **json.loads(f.read_text())}
    return dict(SD_DEFAULTS)


def _sampling_file(name_or_path: str) -> Path | None:
    """The model's catlab_sampling.json: in its folder, or in the hub cache for a hub id (never downloaded)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p / SAMPLING_FILE if (p / SAMPLING_FILE).is_file() else None
    if p.exists() or str(name_or_path).count("/") != 1:  # a single file, or not a hub id
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(name_or_path), SAMPLING_FILE)
    return Path(cached) if isinstance(cached, str) else None


def sampling_defaults(pipe) -> dict:
    """Steps, guidance and resolution that suit this base model (the toy world wants little guidance), read from the
    folder the pipeline was loaded from, however it was loaded (`name_or_path`)."""
    d = sampling_defaults_for(getattr(pipe, "name_or_path", None))
    d.setdefault("resolution", native_resolution(pipe))
    return d


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
