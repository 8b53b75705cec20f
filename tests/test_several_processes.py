"""Several processes: `accelerate launch` on 2 CPU processes trains what one process does (every regime, with a
text-encoder LoRA and the trigger's own embedding), class images are split between processes and drawn in the
training precision, and a compiled UNet follows CAT's switch of the adapters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_helpers import DEMO_CAT, adapter_weights, assert_same_weights, inject_text_encoder_lora, tiny_run_config
from PIL import Image
from safetensors.torch import load_file

from catlab.config import TrainConfig
from catlab.models import LORA_WEIGHT_NAME
from catlab.models.trigger_embedding import TRIGGER_EMBEDDING_NAME
from catlab.training.loop import train

HERE = Path(__file__).resolve().parent


def _cfg(concept_dir, out, **kw):
    return tiny_run_config(concept_dir, out, **{"steps": 2, "checkpoint_every": 0, **kw})


# --- class images: once, split across processes, in the training precision


class _FakeAccelerator:
    def __init__(self, rank, n):
        self.process_index, self.num_processes, self.waited = rank, n, 0

    def wait_for_everyone(self):
        self.waited += 1


def test_class_images_are_split_across_processes(tmp_path, monkeypatch):
    import catlab.sampling.sampler as sampler
    from catlab.training import class_images

    drawn = []

    def fake_generate(pipe, prompts, seeds, **kw):
        drawn.append(list(seeds))
        return [[Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]]

    monkeypatch.setattr(sampler, "generate", fake_generate)
    cfg = TrainConfig(
        regime="dreambooth", num_class_images=5, concepts=[dict(folder="x", trigger="sks", class_word="circle")]
    )
    rank1, rank0 = _FakeAccelerator(1, 2), _FakeAccelerator(0, 2)
    with pytest.raises(FileNotFoundError):  # rank 1 alone: rank 0's share is not there to load yet
        class_images.prepare(object(), cfg, tmp_path, 8, rank1)
    assert drawn == [[10_001, 10_003]] and rank1.waited == 1
    assert not (tmp_path / "class_images" / "manifest.json").exists()
    images, prompts, _ = class_images.prepare(object(), cfg, tmp_path, 8, rank0)
    assert drawn[1] == [10_000, 10_002, 10_004] and images.shape == (5, 3, 8, 8) and prompts == ["a circle"] * 5
    assert (tmp_path / "class_images" / "manifest.json").exists(), "written once, by the main process"
    class_images.prepare(object(), cfg, tmp_path, 8)
    assert len(drawn) == 2, "then cached"


def test_class_images_are_drawn_in_the_training_precision(toyworld_env, concept_dir, tmp_path, monkeypatch):
    import catlab.sampling.sampler as sampler

    real, dtypes = sampler.generate, []

    def spy(pipe, *args, **kw):
        dtypes.append(pipe.unet.dtype)
        return real(pipe, *args, **kw)

    monkeypatch.setattr(sampler, "generate", spy)
    res = train(
        _cfg(concept_dir, tmp_path / "bf16", steps=1, regime="dreambooth", num_class_images=2, mixed_precision="bf16")
    )
    assert dtypes == [torch.bfloat16], "as diffusers' --prior_generation_precision: the weights the run trains with"
    assert res.history[0]["prior"] > 0


# --- torch.compile


@pytest.mark.slow
def test_compiled_and_eager_cat_training_give_the_same_losses(toyworld_env, concept_dir, tmp_path, monkeypatch):
    """CAT switches the adapters off for its target: the compiled UNet must follow the switch (dynamo guards on it
    and compiles a second graph) instead of replaying the adapted graph, which would make the CAT term 0. What could
    go wrong is dynamo's capture, so this compiles with its aot_eager backend: inductor's C++ code generation takes
    minutes on a 2-core CPU (benchmarks/step_cost.py --compile runs inductor)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    kw = dict(steps=3, num_class_images=2, class_images_dir=str(tmp_path / "class"), **DEMO_CAT)
    eager = train(_cfg(concept_dir, tmp_path / "eager", **kw))
    compiled = train(_cfg(concept_dir, tmp_path / "compiled", compile_unet=True, **kw))
    assert min(h["cat"] for h in eager.history[1:]) > 1e-9, "a stale graph would give a CAT term of 0"
    for key in ("loss", "ldm", "cat"):
        got, want = [h[key] for h in compiled.history], [h[key] for h in eager.history]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-12), key
    assert_same_weights(adapter_weights(compiled), adapter_weights(eager))


# --- several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MULTI = {  # name: what it trains; each on 2 processes of batch 2 and on one process of batch 4
    "lora": dict(regime="lora"),
    "dreambooth": dict(regime="dreambooth", prior_share=0.5),
    "cat": DEMO_CAT,
    "lora_te": dict(regime="lora", train_text_encoder=True),
    "cat_te": dict(DEMO_CAT, train_text_encoder=True),
    "cat_trigger": dict(DEMO_CAT, trigger_embedding_lr=0.05),  # pivotal tuning: the trigger's vectors under DDP
}


@pytest.mark.slow
def test_two_processes_train_what_one_process_does(toyworld_env, concept_dir, tmp_path, monkeypatch):
    """`accelerate launch`, 2 CPU processes (gloo): each regime, with and without a text-encoder LoRA, gives the
    adapter one process gives on the same global batch, with the same LR schedule; files are written once and the
    class images split between the processes."""
    common = dict(steps=2, lr_scheduler="cosine", checkpoint_every=1, num_class_images=4)
    multi, single = tmp_path / "multi", tmp_path / "single"
    runs = [
        _cfg(concept_dir, multi / name, batch_size=2, class_images_dir=str(multi / "class"), **common, **kw)
        for name, kw in MULTI.items()
    ]
    runs.append(_cfg(concept_dir, multi / "lora_accum", regime="lora", batch_size=1, gradient_accumulation=2, **common))
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps({"out": str(multi), "runs": [r.to_dict() for r in runs]}))
    # accelerate's --cpu starts several processes through mpirun only; torchrun (--multi_gpu) with
    # ACCELERATE_USE_CPU=true gives two CPU processes on gloo
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(HERE / "distributed_train.py"),
        str(spec),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    launched = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert launched.returncode == 0, launched.stderr[-4000:]
    inject_text_encoder_lora(perturb=0.05, patch=monkeypatch.setattr)
    for name, kw in MULTI.items():
        one = train(
            _cfg(concept_dir, single / name, batch_size=4, class_images_dir=str(single / "class"), **common, **kw)
        )
        got = multi / name
        assert_same_weights(load_file(got / "adapter" / LORA_WEIGHT_NAME), adapter_weights(one))
        logs = [json.loads(line) for line in (got / "metrics.jsonl").read_text().splitlines()]
        assert [h["step"] for h in logs] == [1, 2], f"{name}: one line per step, from the main process only"
        assert [h["lr"] for h in logs] == pytest.approx([h["lr"] for h in one.history]), f"{name}: the LR schedule"
        assert [h["loss"] for h in logs] == pytest.approx([h["loss"] for h in one.history], rel=1e-4), name
        assert sorted(p.name for p in (got / "checkpoints").iterdir()) == ["step-000001"]
        if name == "lora":
            accum = load_file(multi / "lora_accum" / "adapter" / LORA_WEIGHT_NAME)
            assert_same_weights(accum, adapter_weights(one))  # 2 processes x 2 micro-batches of 1 = 1 x 4
        if name.endswith("_te"):
            assert any(k.startswith("text_encoder.") for k in adapter_weights(one))
        if name.endswith("_trigger"):
            trigger = TRIGGER_EMBEDDING_NAME
            assert_same_weights(load_file(got / "adapter" / trigger), load_file(one.adapter_dir / trigger))
    drawn = [set(json.loads((multi / f"drawn_rank{r}.json").read_text())) for r in (0, 1)]
    assert drawn[0] and drawn[1] and not drawn[0] & drawn[1], "each class image drawn by one process"
    assert drawn[0] | drawn[1] == {10_000, 10_001, 10_002, 10_003}, "and each drawn once, the cache reused after"
    for k in range(4):
        split, whole = (np.asarray(Image.open(d / "class" / f"class_{k:04d}.png")) for d in (multi, single))
        # a process draws its share in smaller batches, and batched CPU kernels may sum in another order: the images
        # are the same up to float rounding (seen: one value of 3,072 off by one level, with torch 2.13 on 2 cores)
        diff = np.abs(split.astype(int) - whole.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, "the same images as one process draws"
