"""The trainer at scale: accumulation means a bigger batch, the LR schedule fits any number of processes, one global
draw is cut into slots, a resumed run logs each step once, CAT's target stays the base model's when the text encoder
trains, the caller's RNG is left alone, caption dropout and noise offset. Several processes and torch.compile:
test_several_processes.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_helpers import DEMO_CAT, adapter_weights, assert_same_weights, inject_text_encoder_lora, tiny_run_config
from safetensors.torch import load_file

from catlab.config import TrainConfig
from catlab.models import adapters_disabled, add_lora, load_base
from catlab.training.batches import draw_update
from catlab.training.callbacks import TrainCallback
from catlab.training.loop import train
from catlab.training.losses import CatTerm, cat_loss, mse
from catlab.training.start import lr_schedule

HERE = Path(__file__).resolve().parent


def _cfg(concept_dir, out, **kw):
    return tiny_run_config(concept_dir, out, **{"steps": 2, "checkpoint_every": 0, **kw})


# --- the LR schedule and accumulation


@pytest.mark.parametrize("scheduler", ["cosine", "linear"])
def test_lr_schedule_has_the_same_shape_on_any_number_of_processes(scheduler):
    """accelerate steps a prepared scheduler once per process at each update: the schedule is built that long."""
    cfg = TrainConfig(steps=10, lr_scheduler=scheduler, lr_warmup_steps=3, learning_rate=1.0)
    curves = {}
    for n in (1, 2, 4):
        sched = lr_schedule(cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), n)
        lrs = [sched.get_last_lr()[0]]
        for _ in range(cfg.steps):
            for _ in range(n):  # what AcceleratedScheduler.step does after each optimiser step
                sched.step()
            lrs.append(sched.get_last_lr()[0])
        curves[n] = lrs
    assert curves[2] == pytest.approx(curves[1]) and curves[4] == pytest.approx(curves[1])
    assert curves[1][:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]), "3 updates of warm-up"
    assert curves[1][-1] == pytest.approx(0.0, abs=1e-12), "the decay ends at the last update"


def test_accumulation_counts_updates_and_is_a_bigger_batch(toyworld_env, concept_dir, tmp_path):
    """steps counts optimiser updates; 2 micro-batches of 2 are one batch of 4 (plain LoRA and the demo's CAT)."""
    for name, kw in (("lora", dict(regime="lora")), ("cat", DEMO_CAT)):
        common = dict(
            steps=3,
            lr_scheduler="cosine",
            checkpoint_every=2,
            num_class_images=2,
            class_images_dir=str(tmp_path / "class"),
            **kw,
        )
        micro = train(_cfg(concept_dir, tmp_path / f"{name}_k2", batch_size=2, gradient_accumulation=2, **common))
        whole = train(_cfg(concept_dir, tmp_path / f"{name}_b4", batch_size=4, **common))
        assert [h["step"] for h in micro.history] == [1, 2, 3]
        assert [h["lr"] for h in micro.history] == pytest.approx([h["lr"] for h in whole.history])
        assert micro.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12), "the cosine schedule counts updates"
        assert [p.name for p in (micro.output_dir / "checkpoints").iterdir()] == ["step-000002"]
        state = load_file(micro.output_dir / "checkpoints" / "step-000002" / "state.safetensors")
        assert {float(v) for k, v in state.items() if k.endswith(".step")} == {2.0}, "2 optimiser steps in 2 updates"
        assert [h["loss"] for h in micro.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)
        assert_same_weights(adapter_weights(micro), adapter_weights(whole))


def test_cat_every_counts_updates(toyworld_env, concept_dir, tmp_path, monkeypatch):
    import catlab.training.loop as loop

    lams = []

    def spy(*args, **kw):
        lams.append(kw["lam"])
        return cat_loss(*args, **kw)

    monkeypatch.setattr(loop, "cat_loss", spy)
    train(_cfg(concept_dir, tmp_path / "every", steps=4, cat_every=2, cat_lambda=1.0, gradient_accumulation=2))
    assert lams == [2.0, 2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0], "both micro-batches of every other update, weighted by 2"


# --- draws: caption dropout, noise offset, what one process and several draw


def _draw(cfg: TrainConfig, slots: int = 1):
    return draw_update(cfg, 5, slots, n_items=6, n_class_images=3, latent_shape=(4, 8, 8), n_timesteps=1000)


def test_caption_dropout_and_noise_offset_are_seeded_and_do_what_they_say():
    plain = _draw(TrainConfig(batch_size=400))
    both = _draw(TrainConfig(batch_size=400, caption_dropout=0.3, noise_offset=0.1))
    again = _draw(TrainConfig(batch_size=400, caption_dropout=0.3, noise_offset=0.1))
    assert np.array_equal(both.dropped, again.dropped) and torch.equal(both.noise, again.noise), "seeded by the step"
    assert not plain.dropped.any() and 0.2 < both.dropped.mean() < 0.4
    # everything else is what it was: the new draws come after the old ones
    assert np.array_equal(both.items, plain.items) and torch.equal(both.timesteps, plain.timesteps)
    assert torch.equal(both.eps_latent, plain.eps_latent)
    shift = both.noise - plain.noise  # (400, 4, 8, 8): one offset per image and channel (Guttenberg 2023)
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-6)
    assert 0.05 < float(shift[:, :, 0, 0].std()) < 0.15


def test_caption_dropout_and_noise_offset_reach_training(toyworld_env, concept_dir, tmp_path, monkeypatch):
    import catlab.training.loop as loop

    captions, real_batch = [], loop.slot_batch

    def batch_spy(*args):
        batch = real_batch(*args)
        captions.append(batch.captions)
        return batch

    monkeypatch.setattr(loop, "slot_batch", batch_spy)
    kw = dict(regime="lora", batch_size=4, steps=3)
    plain = train(_cfg(concept_dir, tmp_path / "plain", **kw))
    both = [
        train(_cfg(concept_dir, tmp_path / f"both{k}", caption_dropout=0.5, noise_offset=0.1, **kw)) for k in (0, 1)
    ]
    assert not any("" in c for c in captions[:3]) and any("" in c for c in captions[3:6]), 'rows trained on ""'
    assert captions[3:6] == captions[6:9], "seeded: the same rows are dropped again"
    assert [h["loss"] for h in both[0].history] == [h["loss"] for h in both[1].history]
    assert [h["loss"] for h in both[0].history] != [h["loss"] for h in plain.history]


def test_slots_cut_one_global_draw_and_one_slot_is_the_old_single_process_draw():
    cfg = TrainConfig(batch_size=2, regime="dreambooth", prior_share=0.5)
    two = _draw(cfg, slots=2)  # two processes, or two micro-batches, of 2 rows (+ 1 class image each)
    one = _draw(TrainConfig(batch_size=4, regime="dreambooth", prior_share=0.5))  # one batch of 4 (+ 2 class images)
    assert np.array_equal(two.items, one.items) and np.array_equal(two.class_ids, one.class_ids)
    assert torch.equal(two.noise, one.noise) and torch.equal(two.timesteps, one.timesteps)
    rows = torch.cat([two.tensor_rows(0), two.tensor_rows(1)])
    assert rows.tolist() == [0, 1, 4, 2, 3, 5], "each slot: its concept rows, then its class-image row"
    single = _draw(cfg)
    assert single.tensor_rows(0).tolist() == [0, 1, 2] and single.noise.shape[0] == 3


# --- resume, RNG


class _StopAfter3(TrainCallback):
    def on_step(self, step, logs):
        if step == 3:
            raise KeyboardInterrupt


def test_a_resumed_run_logs_every_step_once(toyworld_env, concept_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(concept_dir, tmp_path / "run", steps=4, checkpoint_every=2, report_to="tensorboard")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_StopAfter3()])
    res = train(cfg, resume=True)
    steps = [json.loads(line)["step"] for line in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], "step 3 was logged before the interruption and again after the resume from step 2"
    starts = json.loads((res.output_dir / "environment.json").read_text())
    assert [s["started_at_step"] for s in starts] == [0, 2], "each start of the run records what it ran on"
    assert (
        starts[1]["torch"] == torch.__version__ and starts[1]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    )
    events = EventAccumulator(str(res.output_dir / "logs" / "catlab"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([h["loss"] for h in res.history])


def test_training_leaves_the_callers_random_state_alone(toyworld_env, concept_dir, tmp_path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = torch.get_rng_state(), np.random.get_state(), random.getstate()
    train(_cfg(concept_dir, tmp_path / "rng", lora_dropout=0.1))
    assert torch.equal(torch.get_rng_state(), before[0]), "LoRA dropout and the LoRA's init are seeded in a forked RNG"
    after = np.random.get_state()
    assert np.array_equal(after[1], before[1][1]) and after[2] == before[1][2] and random.getstate() == before[2]


# --- CAT's target when the text encoder trains


def test_base_text_states_come_from_the_base_text_encoder(toyworld_env):
    from peft import LoraConfig, inject_adapter_in_model

    from catlab.tensors import encode_prompts
    from catlab.training.state import TextStates

    pipe = load_base("toyworld")
    with torch.no_grad():
        base = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a circle", ""])  # (2, L, D)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random A and B
    inject_adapter_in_model(lora, pipe.text_encoder)
    text = TextStates(pipe.tokenizer, pipe.text_encoder, "cpu", frozen=False)
    (adapted,) = text(["a circle", ""])
    assert not torch.allclose(adapted, base, atol=1e-3), "a perturbed text-encoder LoRA changes the states"
    (got,) = text.base(["a circle", ""])
    assert torch.equal(got, base) and not got.requires_grad
    assert torch.allclose(text(["a circle"])[0], adapted[:1], atol=1e-6), "the adapters are on again afterwards"


def test_cat_target_is_the_frozen_base_prediction_on_the_base_text_states(toyworld_env):
    from lora_helpers import randomise_lora, unet_inputs

    pipe = load_base("toyworld")
    z, t, c, cf = unet_inputs(pipe, b=2)
    cf_adapted = cf + 0.5  # stands for what an adapted text encoder gives for the trigger-free caption
    null = torch.zeros(1, *cf.shape[1:])
    add_lora(pipe.unet, rank=2)
    randomise_lora(pipe.unet)
    with torch.no_grad():
        term = CatTerm(guidance=3.0, cond_null=null + 0.5, base_text=(cf, null))
        terms = cat_loss(pipe.unet, z, t, c, cf_adapted, torch.randn_like(z), term=term)
        adapted = pipe.unet(
            torch.cat([z, z]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([cf_adapted, (null + 0.5).expand(2, -1, -1)]),
        ).sample  # (4, C, h, w): c_free rows, then null rows
        with adapters_disabled(pipe.unet):
            base = pipe.unet(
                torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cf, null.expand(2, -1, -1)])
            ).sample
    d = adapted - base
    torch.testing.assert_close(
        terms.cat, mse(d[:2] + (1 - 3.0) / 3.0 * d[2:], torch.zeros_like(d[:2])), atol=1e-6, rtol=1e-4
    )


def test_cat_with_a_training_text_encoder_targets_the_base_text_encoder(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    import catlab.training.loop as loop
    from catlab.tensors import encode_prompts

    inject_text_encoder_lora(perturb=0.05, patch=monkeypatch.setattr)
    seen, captions, real_batch = [], [], loop.slot_batch

    def spy(unet, noisy, t, cond, cond_free, target, **kw):
        seen.append((cond_free.detach().clone(), kw["term"].base_text))
        return cat_loss(unet, noisy, t, cond, cond_free, target, **kw)

    def batch_spy(*args):
        batch = real_batch(*args)
        captions.append(batch.trigger_free)
        return batch

    monkeypatch.setattr(loop, "cat_loss", spy)
    monkeypatch.setattr(loop, "slot_batch", batch_spy)
    train(_cfg(concept_dir, tmp_path / "te", steps=1, train_text_encoder=True, cat_guidance=3.0))
    ((adapted, base_text),) = seen
    pipe = load_base("toyworld")
    with torch.no_grad():
        base = encode_prompts(pipe.tokenizer, pipe.text_encoder, captions[0] + [""])  # (3, L, D)
    assert base_text is not None and torch.allclose(base_text[0], base[:2], atol=1e-6)
    assert torch.allclose(base_text[1], base[2:], atol=1e-6), "the guided term's empty caption too"
    assert not torch.allclose(adapted, base[:2], atol=1e-3), "the adapted prediction sees the adapted text encoder"
