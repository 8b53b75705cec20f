"""Using catlab beyond the toy notebook: webui-format adapters, experiment trackers, checkpoint limits, resume without
pickle, and one-line CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lora_helpers import randomise_lora, tiny_run_config
from safetensors import safe_open
from safetensors.torch import load_file

from catlab.models import LORA_WEIGHT_NAME, WEBUI_WEIGHT_NAME, add_lora, load_base, load_lora, save_lora
from catlab.sampling.sampler import generate
from catlab.training.loop import train


def _cfg(concept_dir, out, **kw):
    return tiny_run_config(concept_dir, out, **{"steps": 4, "checkpoint_every": 0, **kw})


def _header(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# --- adapters in the webuis' (kohya) format


@pytest.mark.slow
def test_webui_file_has_kohya_keys_real_alpha_and_samples_like_catlab(toyworld_env, tmp_path):
    pipe = load_base("toyworld")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]  # attention and ResNet convolutions (the demo's)
    add_lora(pipe.unet, rank=4, alpha=2.0, target_modules=targets)
    randomise_lora(pipe.unet)
    save_lora(pipe, tmp_path / "adapter", metadata={"trigger": "sks", "class_word": "circle"})
    webui = load_file(tmp_path / "adapter" / WEBUI_WEIGHT_NAME)
    modules = {k.split(".")[0] for k in webui}
    assert all(m.startswith(("lora_unet_", "lora_te_")) for m in modules)
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= webui.keys(), m
        assert webui[f"{m}.alpha"].item() == 2.0, "alpha must be the adapter's lora_alpha, not its rank"
        assert webui[f"{m}.lora_down.weight"].shape[0] == 4
    assert len(webui) == 3 * len(modules) == 3 * len(load_file(tmp_path / "adapter" / LORA_WEIGHT_NAME)) // 2
    assert any("_conv1" in m for m in modules) and any("attn2_to_out_0" in m for m in modules)

    ours, theirs = load_base("toyworld"), load_base("toyworld")
    load_lora(ours, tmp_path / "adapter")
    theirs.load_lora_weights(str(tmp_path / "adapter"), weight_name=WEBUI_WEIGHT_NAME)  # diffusers' own kohya loader
    base = generate(load_base("toyworld"), ["a sks circle"], [0, 1], progress=False)[0]
    a = generate(ours, ["a sks circle"], [0, 1], progress=False)[0]
    b = generate(theirs, ["a sks circle"], [0, 1], progress=False)[0]
    for x, y, z in zip(a, b, base):
        x, y, z = (np.asarray(im, dtype=int) for im in (x, y, z))
        assert np.abs(x - y).max() <= 1, "the webui file must sample like catlab's own adapter"
        assert np.abs(x - z).max() > 10, "and the adapter must matter"


def test_webui_file_spells_text_encoder_layers_as_sd1_webuis_do(toyworld_env, tmp_path):
    from peft import LoraConfig, inject_adapter_in_model

    pipe = load_base("toyworld")
    add_lora(pipe.unet, rank=2)
    te_cfg = LoraConfig(r=2, lora_alpha=1.0, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    inject_adapter_in_model(
        te_cfg, pipe.text_encoder, adapter_name="default"
    )  # peft directly: works with every transformers
    pipe.text_encoder.peft_config = {"default": te_cfg}
    randomise_lora(pipe.text_encoder, seed=3)
    save_lora(pipe, tmp_path / "adapter")
    webui = load_file(tmp_path / "adapter" / WEBUI_WEIGHT_NAME)
    te_keys = [k for k in webui if k.startswith("lora_te_")]
    assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)
    assert all(webui[k].item() == 1.0 for k in te_keys if k.endswith(".alpha"))
    loaded = load_base("toyworld")
    loaded.load_lora_weights(str(tmp_path / "adapter"), weight_name=WEBUI_WEIGHT_NAME)
    ids = pipe.tokenizer(
        ["a sks circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], loaded.text_encoder(ids)[0], atol=1e-6)
        assert not torch.allclose(pipe.text_encoder(ids)[0], load_base("toyworld").text_encoder(ids)[0], atol=1e-3)


def test_both_adapter_files_carry_the_run_in_their_metadata(toyworld_env, concept_dir, tmp_path):
    res = train(_cfg(concept_dir, tmp_path / "run", steps=2, rank=2, lora_alpha=3.0, cat_lambda=2.5))
    for name in (LORA_WEIGHT_NAME, WEBUI_WEIGHT_NAME):
        meta = _header(res.adapter_dir / name)
        assert meta["rank"] == "2" and float(meta["lora_alpha"]) == 3.0, name
        assert meta["target_modules"] == "to_k,to_out.0,to_q,to_v"
        assert (meta["trigger"], meta["class_word"], meta["base_model"], meta["regime"]) == (
            "sks",
            "circle",
            "toyworld",
            "cat",
        )
        assert float(meta["cat_lambda"]) == 2.5 and meta["steps"] == "2"
        import catlab

        assert meta["catlab_version"] == catlab.__version__
    assert "lora_adapter_metadata" in _header(res.adapter_dir / LORA_WEIGHT_NAME), "diffusers' own header is kept"
    assert _header(res.adapter_dir / WEBUI_WEIGHT_NAME)["ss_network_dim"] == "2"
    assert all(
        v.item() == 3.0 for k, v in load_file(res.adapter_dir / WEBUI_WEIGHT_NAME).items() if k.endswith(".alpha")
    )
    assert not list(res.adapter_dir.parent.glob(".lora-*")), "no temporary folder is left behind"
    assert json.loads((res.adapter_dir / "catlab_adapter.json").read_text())["trigger"] == "sks"


# --- experiment trackers, checkpoint limits, resume without pickle


def test_validation_draws_the_configured_prompts_settings_and_a_base_row(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    """validation_prompts / _steps / _guidance / _negative_prompt reach the sampler; the base row is drawn with the
    adapters off (so it differs from the adapter's row once the adapter has moved) and tracked as validation/base/."""
    import catlab.sampling.sampler as sampler
    from catlab.training.callbacks import TrainCallback

    calls, real = [], sampler.generate

    def spy(pipe, prompts, seeds, **kw):
        calls.append(
            {
                "prompts": list(prompts),
                "adapters_on": not getattr(
                    next(m for m in pipe.unet.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")),
                    "disable_adapters",
                    False,
                ),
                **kw,
            }
        )
        return real(pipe, prompts, seeds, **kw)

    monkeypatch.setattr(sampler, "generate", spy)
    seen = []

    class Grab(TrainCallback):
        def on_validation(self, step, images):
            seen.append(images)

    cfg = _cfg(
        concept_dir,
        tmp_path / "val",
        steps=2,
        validate_every=2,
        validation_seeds=[0],
        report_to="tensorboard",
        validation_prompts=["a {trigger} {class} on a sand background", "a {class}"],
        validation_steps=3,
        validation_guidance=2.0,
        validation_negative_prompt="blurry",
        validation_base_row=True,
        learning_rate=5e-2,
    )
    train(cfg, callbacks=[Grab()])
    assert [c["prompts"] for c in calls] == [["a sks circle on a sand background", "a circle"]] * 2
    assert all(
        (c["num_inference_steps"], c["guidance_scale"], c["negative_prompt"]) == (3, 2.0, "blurry") for c in calls
    )
    assert [c["adapters_on"] for c in calls] == [True, False], "the adapter's row, then the base model's"
    assert list(seen[0]) == ["a sks circle on a sand background", "a circle"]  # callbacks get the adapter's images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = (
        EventAccumulator(str(tmp_path / "val" / "logs" / "catlab"), size_guidance={"images": 0})
        .Reload()
        .Tags()["images"]
    )
    assert {"validation/a circle", "validation/base/a circle"} <= set(tags)
    from PIL import Image

    with Image.open(tmp_path / "val" / "validation" / "step-000002.png") as grid:
        assert grid.height > 4 * 32  # four rows: base and adapter for each prompt


def test_tensorboard_gets_loss_terms_lr_and_validation_images(toyworld_env, concept_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = train(
        _cfg(concept_dir, tmp_path / "tb", steps=2, report_to="tensorboard", validate_every=2, validation_seeds=[0, 1])
    )
    run = res.output_dir / "logs" / "catlab"
    assert list(run.glob("events.out.tfevents.*")), "tensorboard event files are written under output_dir/logs/catlab"
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"loss", "ldm", "cat", "lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([h["loss"] for h in res.history])
    assert {"validation/a sks circle", "validation/a circle"} <= set(tags["images"])
    (img,) = acc.Images("validation/a sks circle")  # add_images tiles the seeds into one image
    assert img.step == 2 and (img.width, img.height) == (2 * 32, 32)


def test_missing_tracker_package_is_a_clear_error_before_anything_runs(
    toyworld_env, concept_dir, tmp_path, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"report_to='wandb' needs the wandb package.*pip install wandb"):
        train(_cfg(concept_dir, tmp_path / "wb", report_to="wandb"))
    assert not (tmp_path / "wb").exists()


def test_checkpoints_total_limit_keeps_the_newest(toyworld_env, concept_dir, tmp_path):
    res = train(_cfg(concept_dir, tmp_path / "lim", steps=7, checkpoint_every=2, checkpoints_total_limit=2))
    assert [p.name for p in sorted((res.output_dir / "checkpoints").iterdir())] == ["step-000004", "step-000006"]
    res = train(_cfg(concept_dir, tmp_path / "all", steps=5, checkpoint_every=2))
    assert [p.name for p in sorted((res.output_dir / "checkpoints").iterdir())] == ["step-000002", "step-000004"]


@pytest.mark.slow
def test_checkpoint_holds_no_pickle_and_resumes_from_latest_or_a_named_one(toyworld_env, concept_dir, tmp_path):
    full = train(_cfg(concept_dir, tmp_path / "full", steps=6, checkpoint_every=2, lora_dropout=0.1))
    ckpt = full.output_dir / "checkpoints" / "step-000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["adapter", "state.json", "state.safetensors"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 4 and state["lr_scheduler"]["last_epoch"] == 4
    assert any(k.startswith("optimizer.") for k in load_file(ckpt / "state.safetensors"))
    assert _header(ckpt / "adapter" / LORA_WEIGHT_NAME)["steps"] == "4"

    final = load_file(full.adapter_dir / LORA_WEIGHT_NAME)
    for name, how in (("latest", "latest"), ("named", "step-000002"), ("path", str(ckpt))):
        out = tmp_path / name
        if how != str(ckpt):
            import shutil

            shutil.copytree(full.output_dir / "checkpoints", out / "checkpoints")
        res = train(_cfg(concept_dir, out, steps=6, checkpoint_every=2, lora_dropout=0.1, resume_from_checkpoint=how))
        assert len(res.history) == 6 and [h["loss"] for h in res.history] == [h["loss"] for h in full.history], name
        got = load_file(res.adapter_dir / LORA_WEIGHT_NAME)
        assert all(torch.equal(final[k], got[k]) for k in final), (
            f"resume from {how} must give the uninterrupted weights"
        )


def test_resume_without_a_checkpoint_is_a_clear_error(toyworld_env, concept_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(concept_dir, tmp_path / "none", resume_from_checkpoint="latest"))
    with pytest.raises(FileNotFoundError, match="step-000999 does not exist"):
        train(_cfg(concept_dir, tmp_path / "none", resume_from_checkpoint=str(tmp_path / "step-000999")))


# --- the command line: one error line for a user's mistake, never a traceback


def _one_error_line(capsys, argv, *expected) -> str:
    from catlab.cli import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert [line for line in err.splitlines() if line.startswith("catlab: error:")] == [err.splitlines()[0]], err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


def test_cli_errors_are_one_line(toyworld_env, concept_dir, tmp_path, capsys, monkeypatch):
    import yaml

    import catlab.training.start

    def no_model(*a, **k):
        raise AssertionError("the base model must not load before the input is checked")

    monkeypatch.setattr(catlab.training.start, "load_base", no_model)
    (tmp_path / "empty").mkdir()
    run = {
        "concepts": [{"folder": str(tmp_path / "empty"), "trigger": "sks", "class_word": "circle"}],
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    _one_error_line(capsys, ["train", "--config", str(tmp_path / "run.yaml")], "folder is empty")
    assert not (tmp_path / "run").exists()
    _one_error_line(capsys, ["train", "--config", str(tmp_path / "nope.yaml")], "nope.yaml does not exist")
    good = {**run, "concepts": [{"folder": str(concept_dir), "trigger": "sks", "class_word": "circle"}]}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    _one_error_line(
        capsys, ["train", "--config", str(tmp_path / "good.yaml"), "--set", "steps"], "--set expects KEY=VALUE"
    )
    _one_error_line(
        capsys, ["train", "--config", str(tmp_path / "good.yaml"), "--set", "stepz=3"], "--set", "['stepz']"
    )
    _one_error_line(
        capsys, ["train", "--config", str(tmp_path / "good.yaml"), "--set", "steps=ten"], "steps='ten': expected int"
    )
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    _one_error_line(capsys, ["train", "--config", str(tmp_path / "broken.yaml")], "broken.yaml is not valid YAML")
    _one_error_line(capsys, ["train", "--config", str(tmp_path / "good.yaml"), "--resume"], "no checkpoint")
    _one_error_line(
        capsys,
        ["train", "--config", str(tmp_path / "good.yaml"), "--set", "base_model=./nowhere"],
        "'./nowhere' is neither",
    )
    _one_error_line(
        capsys,
        ["sample", "a circle", "--adapter", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")],
        "missing does not exist",
    )
    _one_error_line(
        capsys,
        [
            "eval",
            "--adapter",
            f"cat={tmp_path / 'missing'}",
            "--concept",
            str(concept_dir),
            "--trigger",
            "sks",
            "--class-word",
            "circle",
            "--out",
            str(tmp_path / "eval"),
        ],
        "missing does not exist",
    )
    monkeypatch.setenv("CATLAB_DEBUG", "1")
    from catlab.cli import main

    with pytest.raises(FileNotFoundError):  # for a bug report: the traceback
        main(["train", "--config", str(tmp_path / "nope.yaml")])
