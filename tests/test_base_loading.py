"""Base models as real users have them, loaded offline: one original-format .safetensors checkpoint (civitai's and
the webuis' form), a folder with fp16 variant files, a replaced VAE (folder or single file); pickled checkpoints
refused with advice; and the model's own sampling defaults found however the pipeline was loaded. The models are
SD 1.5's layout at tiny widths (tests/sd15_tiny.py), built in seconds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from sd15_tiny import build_tiny_sd15_pipeline, config_only_folder, single_file_checkpoint, vae_to_original

from catlab.models import SAMPLING_FILE, SD_DEFAULTS, load_base, sampling_defaults


@pytest.fixture(scope="module")
def tiny_sd15():
    return build_tiny_sd15_pipeline(seed=0)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_single_safetensors_checkpoint_loads_offline_with_its_own_weights(tiny_sd15, tmp_path, monkeypatch):
    """from_single_file converts the original key names back; `config` (single_file_config) names a folder with only
    the configs, so nothing is downloaded and every weight comes from the file."""
    from catlab.sampling.sampler import generate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = single_file_checkpoint(tiny_sd15, tmp_path / "community_model.safetensors")
    configs = config_only_folder(tiny_sd15, tmp_path / "configs")
    assert not list(configs.rglob("*.safetensors"))
    pipe = load_base(str(checkpoint), config=str(configs))
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(pipe, part), getattr(tiny_sd15, part)), part
    assert pipe.name_or_path == str(checkpoint)
    assert sampling_defaults(pipe) == {**SD_DEFAULTS, "resolution": 64}
    images = generate(pipe, ["a sks circle"], [0], num_inference_steps=2, progress=False)
    assert images[0][0].size == (64, 64)


def test_a_single_file_without_its_configs_offline_says_what_to_pass(tiny_sd15, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = single_file_checkpoint(tiny_sd15, tmp_path / "model.safetensors")
    with pytest.raises(OSError, match="single_file_config"):
        load_base(str(checkpoint))
    with pytest.raises(ValueError, match="variant='fp16'.*leave variant unset"):
        load_base(str(checkpoint), variant="fp16", config=str(tmp_path))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickled_checkpoints_are_refused_before_anything_is_read(tmp_path, suffix, capsys):
    from catlab.cli import main

    pickled = tmp_path / f"model{suffix}"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"pickled checkpoint.*\.safetensors release.*convert"):
        load_base(str(pickled))
    with pytest.raises(ValueError, match="vae .* pickled checkpoint"):
        load_base("toyworld", vae=str(pickled))
    assert main(["sample", "a circle", "--base", str(pickled), "--out", str(tmp_path / "grid.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("catlab: error: base model") and "pickle" in err and "\n" not in err


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_base(str(tmp_path / "models" / "missing.safetensors"))


def test_fp16_variant_files_and_a_replacement_vae_load_offline(tiny_sd15, tmp_path, monkeypatch):
    """variant picks the `.fp16.safetensors` files; vae takes a VAE folder or a single-file VAE (described by the
    base folder's vae/config.json)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_sd15.save_pretrained(tmp_path / "base", variant="fp16")
    assert (tmp_path / "base" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    other = build_tiny_sd15_pipeline(seed=1).vae
    other.save_pretrained(tmp_path / "vae_folder")
    vae_file = {k: v.contiguous() for k, v in vae_to_original(other, prefix="").items()}  # as vae-ft-mse ships
    save_file(vae_file, str(tmp_path / "vae.safetensors"))
    for vae in (tmp_path / "vae_folder", tmp_path / "vae.safetensors"):
        pipe = load_base(str(tmp_path / "base"), variant="fp16", vae=str(vae))
        assert _same_weights(pipe.vae, other) and _same_weights(pipe.unet, tiny_sd15.unet), vae.name
    with pytest.raises(OSError, match="could not load vae"):
        load_base(str(tmp_path / "base"), variant="fp16", vae=str(tmp_path / "no_vae_here"))


def test_sampling_defaults_come_from_the_folder_however_the_pipeline_was_loaded(tiny_sd15, tmp_path):
    """A pipeline loaded by plain diffusers gets the folder's catlab_sampling.json too (the toy world's guidance 3, not
    SD's 7.5); one built in memory gets SD's defaults; catlab hangs nothing of its own on the pipeline."""
    from diffusers import StableDiffusionPipeline

    tiny_sd15.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / SAMPLING_FILE).write_text(json.dumps({"num_inference_steps": 25, "guidance_scale": 3.0}))
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None)
    assert sampling_defaults(plain) == {"num_inference_steps": 25, "guidance_scale": 3.0, "resolution": 64}
    ours = load_base(str(tmp_path / "pipe"))
    assert sampling_defaults(ours) == sampling_defaults(plain) and not hasattr(ours, "catlab_sampling")
    assert sampling_defaults(tiny_sd15) == {**SD_DEFAULTS, "resolution": 64}
