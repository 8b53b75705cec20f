"""Sampling that fits a consumer GPU, checked on a CPU: half precision and VAE slicing on CUDA only, a small default
batch there, and --batch-size / --steps / --guidance / --templates reaching `generate` and `evaluate`. A fake CUDA
device stands in for the GPU; the real measurements are benchmarks/sd15_gpu_check.py's (docs/results.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from catlab.models import base as models_base
from catlab.sampling import sampler


class FakePipe:
    """A StableDiffusionPipeline's interface as `generate` uses it: records each call's number of prompts."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.name_or_path = None
        self.unet = SimpleNamespace(config=SimpleNamespace(sample_size=4))
        self.vae_scale_factor = 2
        self.vae = SimpleNamespace(use_slicing=False)
        self.vae.enable_slicing = lambda: setattr(self.vae, "use_slicing", True)
        self.calls: list[int] = []

    def __call__(self, prompt, generator, **settings):
        assert len(generator) == len(prompt)
        self.calls.append(len(prompt))
        return SimpleNamespace(images=[Image.new("RGB", (8, 8)) for _ in prompt])


class FakeGenerator:
    """torch.Generator on a 'cuda' device, which a CPU build of torch cannot make."""

    def __init__(self, device=None):
        self.device = device

    def manual_seed(self, seed):
        return self


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_sampling_dtype_is_half_on_cuda_and_fp32_elsewhere(monkeypatch, bf16, expected):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or bf16
    )
    assert models_base.sampling_dtype("cuda") is expected
    assert models_base.sampling_dtype(torch.device("cuda", 1)) is expected
    assert asked == [False, False], "an emulated bf16 (a T4) is slow: only native bf16 counts"
    assert models_base.sampling_dtype("cpu") is torch.float32 and models_base.sampling_dtype("mps") is torch.float32


def test_vae_slicing_is_switched_on_for_a_cuda_pipeline_only():
    """The real AutoencoderKL's switch (diffusers 0.42 dropped the pipeline's enable_vae_slicing)."""
    from diffusers import AutoencoderKL

    for device, sliced in (("cuda", True), ("cpu", False)):
        vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4)
        pipe = SimpleNamespace(device=torch.device(device), vae=vae)
        models_base.enable_vae_slicing(pipe)
        assert pipe.vae.use_slicing is sliced, device


def test_load_for_sampling_loads_on_cuda_in_half_precision_with_slicing(monkeypatch):
    loaded = {}

    def fake_load_base(name, device=None, dtype=None, **loading):
        loaded.update(name=name, device=device, dtype=dtype, **loading)
        return FakePipe(str(device))

    monkeypatch.setattr(models_base, "load_base", fake_load_base)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # a T4
    pipe = models_base.load_for_sampling("stable-diffusion-v1-5/stable-diffusion-v1-5", variant="fp16")
    assert loaded == {
        "name": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "device": torch.device("cuda"),
        "dtype": torch.float16,
        "variant": "fp16",
    }
    assert pipe.vae.use_slicing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pipe = models_base.load_for_sampling("toyworld")
    assert loaded["dtype"] is torch.float32 and loaded["device"] == torch.device("cpu") and not pipe.vae.use_slicing


def test_generate_on_cuda_draws_8_at_a_time_and_slices_the_vae(monkeypatch):
    monkeypatch.setattr(torch, "Generator", FakeGenerator)
    pipe = FakePipe("cuda")
    images = sampler.generate(pipe, ["a sks teapot", "a teapot"], list(range(10)), progress=False)
    assert pipe.calls == [8, 8, 4] and pipe.vae.use_slicing
    assert [len(row) for row in images] == [10, 10]


def test_generate_on_a_cpu_keeps_32_at_a_time_and_takes_a_batch_size():
    pipe = FakePipe("cpu")
    sampler.generate(pipe, ["a circle"], list(range(40)), progress=False)
    assert pipe.calls == [32, 8] and not pipe.vae.use_slicing
    pipe.calls.clear()
    sampler.generate(pipe, ["a circle"], list(range(5)), batch_size=2, progress=False)
    assert pipe.calls == [2, 2, 1]
    with pytest.raises(ValueError, match="batch_size=0"):
        sampler.generate(pipe, ["a circle"], [0], batch_size=0)


def test_catlab_sample_batch_size_reaches_generate(monkeypatch, tmp_path):
    import catlab.models
    from catlab.cli import main

    pipe = FakePipe()
    monkeypatch.setattr(catlab.models, "load_for_sampling", lambda base: pipe)
    assert main(["sample", "a circle", "--seeds", "3", "--batch-size", "2", "--out", str(tmp_path / "a.png")]) == 0
    assert pipe.calls == [2, 1] and (tmp_path / "a.png").is_file()
    pipe.calls.clear()
    assert main(["sample", "a circle", "--seeds", "3", "--out", str(tmp_path / "b.png")]) == 0
    assert pipe.calls == [3]


class Stop(Exception):
    """Ends `catlab eval` once evaluate has been called: nothing is drawn or scored."""


@pytest.fixture()
def eval_call(monkeypatch):
    """`catlab eval` arguments -> the sampling settings and scorers it hands to evaluate."""
    import catlab.evaluation.protocol as protocol
    from catlab.cli import main

    seen = {}

    def fake_evaluate(base, adapters, concept, **kwargs):
        seen.update(kwargs, base=base)
        raise Stop

    monkeypatch.setattr(protocol, "evaluate", fake_evaluate)
    monkeypatch.setattr(protocol, "load_concept", lambda folder, trigger, class_word: (folder, trigger, class_word))

    def call(*argv: str) -> dict:
        seen.clear()
        with pytest.raises(Stop):
            main(["eval", "--concept", "photos/", "--trigger", "sks", "--class-word", "teapot", *argv])
        return seen

    return call


def test_catlab_eval_sampling_flags_reach_evaluate(eval_call):
    seen = eval_call(
        "--base",
        "toyworld",
        "--steps",
        "30",
        "--guidance",
        "6.5",
        "--batch-size",
        "4",
        "--templates",
        "a {trigger} {class} on a table",
        "a {trigger} {class}",
    )
    sampling = seen["sampling"]
    assert (sampling.num_inference_steps, sampling.guidance_scale, sampling.batch_size) == (30, 6.5, 4)
    assert sampling.templates == ("a {trigger} {class} on a table", "a {trigger} {class}")
    left_out = eval_call("--base", "toyworld")["sampling"]
    assert (left_out.num_inference_steps, left_out.guidance_scale, left_out.batch_size) == (None, None, None)


def test_catlab_eval_dreambench_templates(eval_call):
    from catlab.sampling.prompts import REAL_WORLD_TEMPLATES

    seen = eval_call("--base", "toyworld", "--templates", "dreambench")
    assert seen["sampling"].templates == REAL_WORLD_TEMPLATES
    assert all("{trigger}" in t and "{class}" in t for t in REAL_WORLD_TEMPLATES)


def test_catlab_eval_scores_a_real_base_with_a_real_clip_unless_told(eval_call, capsys):
    from catlab.cli.parser import REAL_EMBEDDER

    assert eval_call("--base", "toyworld")["scorers"].embedder == "toyworld"
    assert eval_call("--base", "stable-diffusion-v1-5/stable-diffusion-v1-5")["scorers"].embedder == REAL_EMBEDDER
    assert REAL_EMBEDDER in capsys.readouterr().out  # said, not silent
    assert eval_call("--base", "my/model", "--embedder", "clips/b32")["scorers"].embedder == "clips/b32"
    assert eval_call("--base", "my/model", "--embedder", "toyworld")["scorers"].embedder == "toyworld"
    assert "32 px CLIP" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--batch-size", "--steps"])
def test_sampling_counts_below_one_are_refused_by_the_parser(flag, capsys):
    from catlab.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--concept", "c", "--trigger", "t", "--class-word", "w", flag, "0"])
    assert f"argument {flag}: 0: must be a whole number >= 1" in capsys.readouterr().err
