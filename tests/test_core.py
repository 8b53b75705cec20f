"""Losses and training: CAT term zero at init, gradients only in LoRA, λ = 0 is plain LoRA, exact resume, safety nets, CLI.
Where the CAT term is taken (its rows, captions and λ) is tested in test_cat_rows.py."""

from __future__ import annotations

import json

import pytest
import torch
from lora_helpers import randomise_lora, tiny_run_config, unet_inputs
from safetensors.torch import load_file

from catlab.config import TrainConfig
from catlab.models import add_lora, load_base, load_lora, lora_parameters
from catlab.training.loop import TrainCallback, train
from catlab.training.losses import cat_loss, denoising_target, min_snr_weights, prior_preservation_loss


def _cfg(concept_dir, out, **kw):
    return tiny_run_config(concept_dir, out, **kw)


def test_fresh_adapter_leaves_model_unchanged_and_cat_term_is_zero(toyworld_env):
    pipe = load_base("toyworld")
    z, t, c, cf = unet_inputs(pipe)
    with torch.no_grad():
        base = pipe.unet(z, t, encoder_hidden_states=c).sample
    add_lora(pipe.unet, rank=4)
    target = torch.randn_like(z)
    terms = cat_loss(pipe.unet, z, t, c, cf, target, lam=1.0, batched=False)
    assert terms.cat.item() == 0.0
    batched = cat_loss(pipe.unet, z, t, c, cf, target, lam=1.0)  # one forward of batch 2B: only float rounding differs
    assert batched.cat.item() < 1e-10
    with torch.no_grad():
        assert torch.equal(pipe.unet(z, t, encoder_hidden_states=c).sample, base)


def test_only_lora_parameters_receive_gradients(toyworld_env):
    pipe = load_base("toyworld")
    n = add_lora(pipe.unet, rank=2)
    assert n == sum(p.numel() for p in lora_parameters(pipe.unet)) > 0
    randomise_lora(pipe.unet)
    z, t, c, cf = unet_inputs(pipe)
    terms = cat_loss(pipe.unet, z, t, c, cf, torch.randn_like(z), lam=1.0)
    assert terms.cat.item() > 0
    terms.loss.backward()
    for name, p in pipe.unet.named_parameters():
        if "lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_cat_lambda_zero_is_plain_lora(toyworld_env):
    pipe = load_base("toyworld")
    add_lora(pipe.unet, rank=2)
    randomise_lora(pipe.unet)
    z, t, c, cf = unet_inputs(pipe)
    target = torch.randn_like(z)
    plain = cat_loss(pipe.unet, z, t, c, cf, target, lam=0.0)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(pipe.unet(z, t, encoder_hidden_states=c).sample, target)
    assert plain.cat is None
    assert torch.allclose(plain.loss, expected)
    full = cat_loss(pipe.unet, z, t, c, cf, target, lam=2.0)
    assert torch.allclose(full.ldm, expected, atol=1e-5)  # batched with the trigger-free pass, same result
    assert torch.allclose(full.loss, full.ldm + 2.0 * full.cat)


def test_targets_and_weights(toyworld_env):
    pipe = load_base("toyworld")
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(denoising_target(sched, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-5)
    eps_sched = DDPMScheduler.from_config({**sched.config, "prediction_type": "epsilon"})
    assert torch.equal(denoising_target(eps_sched, x0, eps, t), eps)
    w = min_snr_weights(sched, t, gamma=5.0)
    snr = a.flatten() / (1 - a.flatten())
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / (snr + 1))
    pred, target = torch.zeros(4, 1), torch.tensor([[1.0], [1.0], [2.0], [2.0]])
    terms = prior_preservation_loss(pred, target, n_instance=2, prior_weight=0.5)
    assert terms.ldm.item() == pytest.approx(1.0) and terms.prior.item() == pytest.approx(4.0)
    assert terms.loss.item() == pytest.approx(3.0)


class _Interrupt(TrainCallback):
    def on_step(self, step, logs):
        if step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("regime, accumulation", [("cat", 1), ("lora", 1), ("cat", 2)])
def test_resume_gives_identical_weights(toyworld_env, concept_dir, tmp_path, regime, accumulation):
    kw = dict(regime=regime, lora_dropout=0.1, gradient_accumulation=accumulation)
    full = train(_cfg(concept_dir, tmp_path / "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(concept_dir, tmp_path / "cut", **kw), callbacks=[_Interrupt()])
    resumed = train(_cfg(concept_dir, tmp_path / "cut", **kw), resume=True)
    a = load_file(full.adapter_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.adapter_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert (tmp_path / "full" / "config.yaml").exists() and (tmp_path / "full" / "metrics.jsonl").exists()
    logged = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6], "step 4, logged before the interruption, is logged once after the resume"


def test_prior_preservation_caches_class_images(toyworld_env, concept_dir, tmp_path):
    cls_dir = tmp_path / "class_images"
    r1 = train(
        _cfg(
            concept_dir,
            tmp_path / "r1",
            regime="dreambooth",
            steps=2,
            num_class_images=3,
            class_images_dir=str(cls_dir),
        )
    )
    made = sorted(cls_dir.glob("*.png"))
    assert len(made) == 3 and r1.history[-1]["prior"] > 0
    stamps = [p.stat().st_mtime_ns for p in made]
    train(
        _cfg(
            concept_dir,
            tmp_path / "r2",
            regime="dreambooth",
            steps=2,
            num_class_images=3,
            class_images_dir=str(cls_dir),
        )
    )
    assert [p.stat().st_mtime_ns for p in made] == stamps, "cached class images must be reused, not regenerated"


def test_class_images_of_one_model_folder_are_reused_however_the_folder_is_named(tmp_path, monkeypatch):
    """A model folder given relatively (CATLAB_TOYWORLD_DIR=runs/x) and absolutely is one model: its cached class
    images are reused, not refused as another model's; another model's still are."""
    from types import SimpleNamespace

    import catlab.sampling.sampler as sampler
    from catlab.training.class_images import draw_missing

    drawn = []
    monkeypatch.setattr(sampler, "generate", lambda pipe, prompts, seeds, **kw: drawn.append(list(seeds)) or [[]])
    (tmp_path / "models" / "toy").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "class_images"
    draw_missing(SimpleNamespace(name_or_path="models/toy"), "a circle", 0, folder, 32)
    manifest = {"prompt": "a circle", "model": str(tmp_path / "models" / "toy"), "resolution": 32}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    draw_missing(SimpleNamespace(name_or_path="models/toy"), "a circle", 0, folder, 32)  # relative: the same model
    draw_missing(SimpleNamespace(name_or_path=str(tmp_path / "models" / "toy")), "a circle", 0, folder, 32)
    with pytest.raises(FileExistsError, match="holds class images for"):
        draw_missing(SimpleNamespace(name_or_path="other/model"), "a circle", 0, folder, 32)


def test_existing_output_is_never_overwritten(toyworld_env, concept_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="resume"):
        train(_cfg(concept_dir, out))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(concept_dir, tmp_path / "fresh"), resume=True)
    assert (out / "precious.txt").read_text() == "mine"


class _Diverge(TrainCallback):
    """Simulates a diverging run: after step 4 the adapter's weights become NaN."""

    def __init__(self):
        self.unet = None

    def on_step(self, step, logs):
        if step == 4:
            import gc

            from peft.tuners.lora import LoraLayer

            for obj in gc.get_objects():
                if isinstance(obj, LoraLayer):
                    for p in obj.lora_A.parameters():
                        p.data.fill_(float("nan"))


def test_non_finite_loss_stops_with_clear_message(toyworld_env, concept_dir, tmp_path):
    cfg = _cfg(concept_dir, tmp_path / "nan", steps=8, checkpoint_every=3)
    with pytest.raises(FloatingPointError, match=r"at step 4.*Last good checkpoint: .*step-000003"):
        train(cfg, callbacks=[_Diverge()])
    ckpts = sorted((tmp_path / "nan" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000003"], "the last good checkpoint must be kept, and no bad one written"
    state = load_file(ckpts[0] / "state.safetensors")  # no pickle: LoRA and optimizer tensors
    assert any(k.startswith("unet.") for k in state) and all(torch.isfinite(v).all() for v in state.values())


def test_adamw_is_fused_on_a_cpu(toyworld_env, concept_dir, tmp_path):
    """torch's default AdamW loops over the LoRA tensors in Python on a CPU; training asks for the fused kernel."""
    from catlab.training.start import start_run

    run, _ = start_run(_cfg(concept_dir, tmp_path / "fused", steps=1))
    assert run.optimizer.optimizer.defaults["fused"] is True


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="regime='bogus'"):
        TrainConfig(regime="bogus")
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"stepz": 3})


def test_sample_cli_writes_a_grid_and_never_overwrites(toyworld_env, tmp_path):
    from PIL import Image

    from catlab.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "a circle", "a red star", "--seeds", "3", "--steps", "2", "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.width > 3 * 96 and grid.height > 2 * 96
    with pytest.raises(SystemExit, match="exists"):
        main(["sample", "a circle", "--out", str(out)])


def test_train_cli_with_yaml_config_and_overrides(toyworld_env, concept_dir, tmp_path, capsys):
    import yaml

    from catlab.cli import main

    cfg = {
        "concepts": [{"folder": str(concept_dir), "trigger": "sks", "class_word": "circle"}],
        "output_dir": str(tmp_path / "run"),
        "steps": 2,
        "batch_size": 2,
        "checkpoint_every": 0,
        "validate_every": 0,
        "cat_prompt": "class",
    }  # a 0.1 spelling
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.warns(FutureWarning) as notes:  # catlab 0.1's spellings are still read, with a note naming the new one
        assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", "regime=none", "--set", "rank=2"]) == 0
    assert {str(n.message).split(" is read as ")[1].split(" (")[0] for n in notes} >= {
        "'regime: lora'",
        "'trigger_free: replace'",
    }
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (
        saved["regime"] == "lora"
        and saved["trigger_free"] == "replace"
        and "cat_prompt" not in saved
        and saved["rank"] == 2
    )
    assert (tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) != 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("catlab: error:")] == [err.strip()]
    assert "bad.yaml" in err and "unknown config field(s) ['stepz']" in err and "Traceback" not in err


def test_text_encoder_lora_option_trains_and_saves(toyworld_env, concept_dir, tmp_path):
    """Whatever the peft version: transformers 5 refuses text-encoder adapters with peft < 0.22, and add_lora then
    injects them through peft itself."""
    cfg = _cfg(concept_dir, tmp_path / "te", steps=2, checkpoint_every=0, train_text_encoder=True, regime="lora")
    res = train(cfg)
    keys = load_file(res.adapter_dir / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = load_base("toyworld")
    load_lora(pipe, res.adapter_dir, "te")
    assert "te" in pipe.text_encoder.peft_config


class _SeesValidation(TrainCallback):
    def __init__(self):
        self.grids = []

    def on_validation(self, step, images):
        self.grids.append((step, images))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_validates_and_its_adapter_samples(toyworld_env, concept_dir, tmp_path, precision):
    """Mixed precision once crashed at the first validation (VAE decode got fp32 latents from the wrapped UNet)."""
    from catlab.sampling.sampler import generate

    seen = _SeesValidation()
    res = train(
        _cfg(
            concept_dir,
            tmp_path / precision,
            steps=2,
            validate_every=1,
            checkpoint_every=1,
            mixed_precision=precision,
            validation_seeds=[0, 1],
            validation_steps=2,  # half precision samples slowly on a CPU; the crash was in the decode after them
        ),
        callbacks=[seen],
    )
    assert [s for s, _ in seen.grids] == [1, 2]
    assert all(len(imgs) == 2 and imgs[0].size == (32, 32) for _, grid in seen.grids for imgs in grid.values())
    assert (res.output_dir / "validation" / "step-000002.png").exists()
    # the adapter samples with a half-precision base too, as a notebook would after training
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    pipe = load_base("toyworld", dtype=dtype)
    load_lora(pipe, res.adapter_dir, "run")
    images = generate(pipe, ["a sks circle"], [0, 1], num_inference_steps=2, progress=False)
    assert len(images[0]) == 2 and all(im.getextrema() != ((0, 0), (0, 0), (0, 0)) for im in images[0])


@pytest.mark.slow
def test_train_cli_in_bf16_with_validation(toyworld_env, concept_dir, tmp_path):
    import yaml

    from catlab.cli import main

    out = tmp_path / "cli_bf16"
    cfg = {
        "concepts": [{"folder": str(concept_dir), "trigger": "sks", "class_word": "circle"}],
        "output_dir": str(out),
        "steps": 2,
        "batch_size": 2,
        "checkpoint_every": 0,
        "validate_every": 1,
        "validation_seeds": [0],
        "validation_steps": 2,  # bf16 samples slowly on a CPU; two steps reach the decode as fifty do
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", "mixed_precision=bf16"]) == 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000001.png", "step-000002.png"]
