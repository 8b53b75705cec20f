"""SD 1.5's real layout on the CPU, through catlab's own entry points: a pipeline built from SD 1.5's configs with random
weights (tests/sd15_layout.py), saved to a folder and named by its path; two CAT steps with a checkpoint and a
validation grid (`catlab train`), `catlab sample` with the adapter, and the adapter scored against the base model by
`evaluate` (what `catlab eval` runs).

The toy world cannot show what only the real layout has: 16 transformer blocks over four resolutions, a down block
and an up block without attention, 8 heads of 40 to 160 channels, 768-wide 77-token text states, an 8x VAE, PNDM
with epsilon prediction. Images are 64 px (8x8 latents, the smallest size SD 1.5's three downsamplings take) and
sampling takes 2 steps (the folder's catlab_sampling.json), so the run fits in about two minutes on two CPU cores.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import shutil
import time
from contextlib import contextmanager

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from sd15_layout import TOKENS, TRANSFORMER_BLOCKS, save_sd15_pipeline

from catlab.models import LORA_WEIGHT_NAME, WEBUI_WEIGHT_NAME

pytestmark = [pytest.mark.sd15]

RESOLUTION = 64
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # catlab's default: every attention projection


@contextmanager
def _timed(phase: str):
    """Prints wall and CPU time of a phase (pytest -s shows them)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    print(
        f"[sd15 layout] {phase}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
        flush=True,
    )


@pytest.fixture(scope="session")
def sd15_dir(tmp_path_factory):
    """The SD-1.5-shaped pipeline folder (3.9 GB, fp32), removed at the end of the session."""
    folder = tmp_path_factory.mktemp("sd15_layout") / "pipeline"
    with _timed("build and save the pipeline"):
        save_sd15_pipeline(folder, sampling={"num_inference_steps": 2, "resolution": RESOLUTION})
        gc.collect()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _attention_layers(unet) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [name for name, m in unet.named_modules() if isinstance(m, Attention)]


def test_sd15_layout_cat_train_sample_eval_by_path(sd15_dir, tmp_path, monkeypatch):
    import pandas as pd
    from diffusers.models.attention import BasicTransformerBlock
    from PIL import Image

    from catlab.cli import main
    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.protocol import evaluate, load_concept
    from catlab.models import adapters_disabled, load_base, load_lora, native_resolution, sampling_defaults
    from catlab.sampling.sampler import generate
    from catlab.toyworld.world import export_concept

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0, c0 = time.perf_counter(), time.process_time()
    concept = export_concept("two_tone_circle", tmp_path / "concept", resolution=RESOLUTION)
    run = tmp_path / "run"
    cfg = {
        "base_model": str(sd15_dir),
        "concepts": [{"folder": str(concept), "trigger": "sks", "class_word": "circle"}],
        "output_dir": str(run),
        "regime": "cat",
        "steps": 2,
        "batch_size": 1,
        "resolution": RESOLUTION,
        "rank": 1,
        "learning_rate": 1e-4,
        "random_flip": False,
        "checkpoint_every": 1,
        "validate_every": 2,
        "validation_seeds": [0],
        "log_every": 1,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))

    with _timed("catlab train (2 CAT steps, checkpoint, validation)"):
        assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
        gc.collect()
    adapter = run / "adapter"
    assert (adapter / LORA_WEIGHT_NAME).is_file() and (adapter / WEBUI_WEIGHT_NAME).is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert sorted(p.name for p in (run / "checkpoints" / "step-000001").iterdir()) == [
        "adapter",
        "state.json",
        "state.safetensors",
    ]
    assert [p.name for p in (run / "validation").iterdir()] == ["step-000002.png"]
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logs] == [1, 2] and all(math.isfinite(h["loss"]) and "cat" in h for h in logs)
    with safe_open(str(adapter / LORA_WEIGHT_NAME), framework="pt") as f:
        header = f.metadata()
    assert header["base_model"] == str(sd15_dir) and header["regime"] == "cat" and header["rank"] == "1"

    with _timed("catlab sample (2 prompts x 1 seed, 2 steps)"):
        grid = tmp_path / "grid.png"
        assert (
            main(
                [
                    "sample",
                    "a sks circle",
                    "a circle",
                    "--base",
                    str(sd15_dir),
                    "--adapter",
                    str(adapter),
                    "--seeds",
                    "1",
                    "--steps",
                    "2",
                    "--out",
                    str(grid),
                ]
            )
            == 0
        )
        gc.collect()
    with Image.open(grid) as im:
        assert im.width > 96 and im.height > 2 * 96

    # `catlab eval` has no flag for sampling steps or templates, and its five templates x 2 prompts x 2 seeds x 2 methods
    # (40 images) take a minute here: evaluate(), which it calls, with one template and 2 steps
    with _timed("evaluate (base + CAT, 1 template x 2 prompts x 2 seeds, 2 steps)"):
        out = tmp_path / "eval"
        sampling = EvalSampling(templates=("a {trigger} {class}",), seeds=2, num_inference_steps=2)
        res = evaluate(
            str(sd15_dir),
            {"cat": adapter},
            load_concept(concept, "sks", "circle"),
            sampling=sampling,
            out_dir=out,
            progress=False,
        )
        gc.collect()
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * 2 * 2 and set(per_image["method"]) == {"base", "cat"}
    assert set(pd.read_csv(out / "summary.csv")["method"]) == set(res.summary["method"]) == {"base", "cat"}
    with Image.open(out / per_image["image"][0]) as im:
        assert im.size == (RESOLUTION, RESOLUTION)

    with _timed("adapter loaded back into the saved pipeline"):
        pipe = load_base(str(sd15_dir))
        unet = pipe.unet
        # the real layout, as loaded from the folder
        assert native_resolution(pipe) == 512 and sampling_defaults(pipe)["resolution"] == RESOLUTION
        assert pipe.tokenizer.model_max_length == TOKENS and pipe.text_encoder.config.max_position_embeddings == TOKENS
        assert sum(isinstance(m, BasicTransformerBlock) for m in unet.modules()) == TRANSFORMER_BLOCKS == 16
        layers = _attention_layers(unet)
        assert len(layers) == 2 * TRANSFORMER_BLOCKS  # self- and cross-attention in each block
        modules = dict(unet.named_modules())
        # the adapter covers every attention projection of every block, with the layer's own shapes
        sd = load_file(adapter / LORA_WEIGHT_NAME)
        expected = {f"unet.{layer}.{t}.lora_{ab}.weight" for layer in layers for t in TARGETS for ab in "AB"}
        assert set(sd) == expected and len(sd) == 2 * 4 * 32
        for layer in layers:
            for t in TARGETS:
                lin = modules[f"{layer}.{t}"]
                assert sd[f"unet.{layer}.{t}.lora_A.weight"].shape == (1, lin.in_features)
                assert sd[f"unet.{layer}.{t}.lora_B.weight"].shape == (lin.out_features, 1)
        assert {
            sd[f"unet.{layer}.attn2.to_k.lora_A.weight"].shape[1] for layer in (n.rsplit(".", 1)[0] for n in layers)
        } == {768}
        webui = load_file(adapter / WEBUI_WEIGHT_NAME)
        assert len(webui) == 3 * 4 * 32 and all(k.startswith("lora_unet_") for k in webui)

        load_lora(pipe, adapter, "cat")
        assert "cat" in unet.peft_config
        g = torch.Generator().manual_seed(0)
        z, t = torch.randn(1, 4, RESOLUTION // 8, RESOLUTION // 8, generator=g), torch.tensor([500])
        ids = pipe.tokenizer(["a sks circle"], padding="max_length", max_length=TOKENS, return_tensors="pt").input_ids
        with torch.no_grad():
            c = pipe.text_encoder(ids)[0]
            assert c.shape == (1, TOKENS, 768)
            with_adapter = unet(z, t, encoder_hidden_states=c).sample
            with adapters_disabled(unet):
                base = unet(z, t, encoder_hidden_states=c).sample
        assert torch.isfinite(with_adapter).all() and not torch.equal(with_adapter, base), (
            "two steps must have moved the adapter"
        )
        images = generate(pipe, ["a sks circle"], [0], num_inference_steps=2, progress=False)
        assert images[0][0].size == (RESOLUTION, RESOLUTION)
        del pipe, unet
        gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB (Linux)
    print(
        f"[sd15 layout] whole test: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU; "
        f"peak RSS of the process {peak:.1f} GiB",
        flush=True,
    )


def test_sd15_layout_folder_saved_in_fp16_samples_in_fp32(sd15_dir, tmp_path, monkeypatch):
    """A folder whose text encoder was saved in fp16 (as fp16 downloads and many SD 1.5 fine-tunes are): transformers 5
    loads it in fp16 while diffusers loads the UNet in fp32; load_base makes them agree, so sampling works."""
    from transformers import CLIPTextModel

    from catlab.models import load_base
    from catlab.sampling.sampler import generate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "pipeline_fp16_text"
    folder.mkdir()
    for part in sd15_dir.iterdir():
        if part.name != "text_encoder":
            (folder / part.name).symlink_to(part)
    with _timed("fp16 text encoder folder"):
        te = CLIPTextModel.from_pretrained(sd15_dir / "text_encoder").half()
        te.save_pretrained(folder / "text_encoder")
        del te
        pipe = load_base(str(folder))
        assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32
        images = generate(pipe, ["a sks circle"], [0], num_inference_steps=2, progress=False)
    assert images[0][0].size == (RESOLUTION, RESOLUTION)
