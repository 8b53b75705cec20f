"""Core invariants: adapter off = base model, CAT term zero at init, gradients only in LoRA, diffusers round-trip, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from catlab.config import ConceptConfig, TrainConfig
from catlab.losses import cat_loss, denoising_target, min_snr_weights, prior_preservation_loss
from catlab.models import (
    AdapterMismatchError,
    adapters_disabled,
    add_lora,
    load_base,
    load_lora,
    lora_parameters,
    save_lora,
    set_active_adapters,
)
from catlab.sample import generate
from catlab.toyworld.world import export_concept
from catlab.train import TrainCallback, train


@pytest.fixture()
def toyworld_env(tiny_assets, monkeypatch):
    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
    return tiny_assets


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    return export_concept("two_tone_circle", tmp_path_factory.mktemp("concept") / "two_tone_circle")


def _inputs(pipe, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    z = torch.randn(b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ids = pipe.tokenizer(["a sks circle"] * b, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    ids_free = pipe.tokenizer(["a circle"] * b, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return z, t, pipe.text_encoder(ids)[0], pipe.text_encoder(ids_free)[0]


def _randomise_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _cfg(concept_dir, out, **kw):
    base = dict(concepts=[ConceptConfig(str(concept_dir), "sks", "circle")], output_dir=str(out), steps=6, batch_size=2,
                checkpoint_every=3, validate_every=0, log_every=1, random_flip=False)
    return TrainConfig(**{**base, **kw})


def test_adapter_off_is_exact_base_model(toyworld_env):
    pipe = load_base("toyworld")
    z, t, c, _ = _inputs(pipe)
    with torch.no_grad():
        base = pipe.unet(z, t, encoder_hidden_states=c).sample
    add_lora(pipe.unet, rank=4)
    _randomise_lora(pipe.unet)
    with torch.no_grad():
        adapted = pipe.unet(z, t, encoder_hidden_states=c).sample
        with adapters_disabled(pipe.unet):
            off = pipe.unet(z, t, encoder_hidden_states=c).sample
        back_on = pipe.unet(z, t, encoder_hidden_states=c).sample
    assert not torch.equal(adapted, base), "a non-zero LoRA must change the output"
    assert torch.equal(off, base), "adapters disabled must give the base model's output exactly"
    assert torch.equal(back_on, adapted), "re-enabling must restore the adapted model"


def test_fresh_adapter_leaves_model_unchanged_and_cat_term_is_zero(toyworld_env):
    pipe = load_base("toyworld")
    z, t, c, cf = _inputs(pipe)
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
    _randomise_lora(pipe.unet)
    z, t, c, cf = _inputs(pipe)
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
    _randomise_lora(pipe.unet)
    z, t, c, cf = _inputs(pipe)
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


def test_saved_lora_loads_in_diffusers_and_reproduces_samples(toyworld_env, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_base("toyworld")
    add_lora(pipe.unet, rank=4)
    _randomise_lora(pipe.unet)
    ours = generate(pipe, ["a sks circle"], [3, 4], num_inference_steps=4, progress=False)[0]
    path = save_lora(pipe, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors"
    with pytest.raises(FileExistsError, match="overwrite"):
        save_lora(pipe, tmp_path / "lora")
    plain = StableDiffusionPipeline.from_pretrained(toyworld_env / "pipeline", safety_checker=None, requires_safety_checker=False)
    plain.load_lora_weights(tmp_path / "lora")  # diffusers' own loader
    pipe2 = load_base("toyworld")
    pipe2.unet = plain.unet
    theirs = generate(pipe2, ["a sks circle"], [3, 4], num_inference_steps=4, progress=False)[0]
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sampling_is_deterministic_and_batch_independent(toyworld_env):
    pipe = load_base("toyworld")
    one = generate(pipe, ["a circle", "a red square"], [0, 1, 2], num_inference_steps=3, batch_size=1, progress=False)
    again = generate(pipe, ["a circle", "a red square"], [0, 1, 2], num_inference_steps=3, batch_size=1, progress=False)
    many = generate(pipe, ["a circle", "a red square"], [0, 1, 2], num_inference_steps=3, batch_size=6, progress=False)
    for r1, r2, r3 in zip(one, again, many):
        for a, b, c in zip(r1, r2, r3):
            assert np.array_equal(np.asarray(a), np.asarray(b)), "same seed, same batching: identical pixels"
            # other batch sizes pick other float kernels (~1e-7 apart), which can flip a pixel by one level
            diff = np.abs(np.asarray(a, dtype=int) - np.asarray(c, dtype=int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.05, f"batching changed the image: max diff {diff.max()}"
    assert not np.array_equal(np.asarray(one[0][0]), np.asarray(one[0][1])), "different seeds must differ"


def test_combine_adapters_and_mismatch_error(toyworld_env, tmp_path):
    pipe = load_base("toyworld")
    for name, seed in (("a", 1), ("b", 2)):
        p = load_base("toyworld")
        add_lora(p.unet, rank=2)
        _randomise_lora(p.unet, seed)
        save_lora(p, tmp_path / name)
        load_lora(pipe, tmp_path / name, adapter_name=name)
    z, t, c, _ = _inputs(pipe)

    def out():
        with torch.no_grad():
            return pipe.unet(z, t, encoder_hidden_states=c).sample

    set_active_adapters(pipe, None)
    base = out()
    set_active_adapters(pipe, ["a", "b"], [0.0, 0.0])
    assert torch.allclose(out(), base, atol=1e-6)
    set_active_adapters(pipe, ["a", "b"], [1.0, 0.5])
    both = out()
    set_active_adapters(pipe, ["a"], [1.0])
    assert not torch.allclose(both, out())
    with pytest.raises(KeyError, match="not loaded"):
        set_active_adapters(pipe, ["zzz"])
    bad = tmp_path / "bad"
    bad.mkdir()
    sd = load_file(tmp_path / "a" / "pytorch_lora_weights.safetensors")
    save_file({k: torch.zeros(v.shape[0] + 3, *v.shape[1:]) for k, v in sd.items()}, bad / "pytorch_lora_weights.safetensors")
    with pytest.raises(AdapterMismatchError, match="does not fit"):
        load_lora(pipe, bad, adapter_name="bad")
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        load_lora(pipe, tmp_path, adapter_name="none")


def test_add_lora_rejects_unknown_targets(toyworld_env):
    pipe = load_base("toyworld")
    with pytest.raises(ValueError, match="not found"):
        add_lora(pipe.unet, target_modules=["to_qq"])


class _Interrupt(TrainCallback):
    def on_step(self, step, logs):
        if step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("regime", ["cat", "none"])
def test_resume_gives_identical_weights(toyworld_env, concept_dir, tmp_path, regime):
    full = train(_cfg(concept_dir, tmp_path / "full", regime=regime, lora_dropout=0.1))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(concept_dir, tmp_path / "cut", regime=regime, lora_dropout=0.1), callbacks=[_Interrupt()])
    resumed = train(_cfg(concept_dir, tmp_path / "cut", regime=regime, lora_dropout=0.1), resume=True)
    a = load_file(full.adapter_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.adapter_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert (tmp_path / "full" / "config.yaml").exists() and (tmp_path / "full" / "metrics.jsonl").exists()


def test_prior_preservation_caches_class_images(toyworld_env, concept_dir, tmp_path):
    cls_dir = tmp_path / "class_images"
    r1 = train(_cfg(concept_dir, tmp_path / "r1", regime="ppl", steps=2, num_class_images=3, class_images_dir=str(cls_dir)))
    made = sorted(cls_dir.glob("*.png"))
    assert len(made) == 3 and r1.history[-1]["prior"] > 0
    stamps = [p.stat().st_mtime_ns for p in made]
    train(_cfg(concept_dir, tmp_path / "r2", regime="ppl", steps=2, num_class_images=3, class_images_dir=str(cls_dir)))
    assert [p.stat().st_mtime_ns for p in made] == stamps, "cached class images must be reused, not regenerated"


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
    state = torch.load(ckpts[0] / "state.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["unet_lora"].values())


def test_cat_null_share_holds_the_unconditional_caption_too(toyworld_env, concept_dir, tmp_path, monkeypatch):
    import catlab.train as train_module

    seen = []

    def spy(unet, noisy, t, cond, cond_free, target, **kw):
        seen.append(cond_free.detach().clone())
        return cat_loss(unet, noisy, t, cond, cond_free, target, **kw)

    monkeypatch.setattr(train_module, "cat_loss", spy)
    train(_cfg(concept_dir, tmp_path / "null", steps=1, batch_size=2, cat_null_share=0.5))
    pipe = load_base("toyworld")
    ids = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        null = pipe.text_encoder(ids)[0][0]  # (L, D): CFG's unconditional caption
    assert len(seen) == 1 and seen[0].shape[0] == 2
    assert torch.allclose(seen[0][0], null, atol=1e-6), "the first half of the CAT rows must use the empty caption"
    assert not torch.allclose(seen[0][1], null, atol=1e-3), "the rest keep their trigger-free caption"
    with pytest.raises(ValueError, match="cat_null_share=1.5"):
        TrainConfig(cat_null_share=1.5)


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


def test_train_cli_with_yaml_config_and_overrides(toyworld_env, concept_dir, tmp_path):
    import yaml

    from catlab.cli import main

    cfg = {"concepts": [{"folder": str(concept_dir), "trigger": "sks", "class_word": "circle"}], "output_dir": str(tmp_path / "run"),
           "steps": 2, "batch_size": 2, "checkpoint_every": 0, "validate_every": 0}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", "regime=none", "--set", "rank=2"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["regime"] == "none" and saved["rank"] == 2
    assert (tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors").exists()
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*unknown config field"):
        main(["train", "--config", str(tmp_path / "bad.yaml")])


def test_adapters_disabled_restores_the_previous_state(toyworld_env):
    pipe = load_base("toyworld")
    add_lora(pipe.unet, rank=2)
    _randomise_lora(pipe.unet)
    z, t, c, _ = _inputs(pipe)
    with torch.no_grad():
        adapted = pipe.unet(z, t, encoder_hidden_states=c).sample
        pipe.unet.disable_adapters()
        base = pipe.unet(z, t, encoder_hidden_states=c).sample
        with adapters_disabled(pipe.unet):
            pass
        assert torch.equal(pipe.unet(z, t, encoder_hidden_states=c).sample, base), "adapters were off before and must stay off"
        pipe.unet.enable_adapters()
        assert torch.equal(pipe.unet(z, t, encoder_hidden_states=c).sample, adapted)


def test_adapters_disabled_switches_every_layer_and_restores_a_mixed_state(toyworld_env):
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = load_base("toyworld")
    z, t, c, _ = _inputs(pipe)
    with torch.no_grad():
        base = pipe.unet(z, t, encoder_hidden_states=c).sample
    add_lora(pipe.unet, rank=2)
    _randomise_lora(pipe.unet)
    layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    with torch.no_grad():
        layers[0].enable_adapters(False)  # one layer already off, the rest on
        mixed = pipe.unet(z, t, encoder_hidden_states=c).sample
        trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
        with adapters_disabled(pipe.unet):
            assert all(m.disable_adapters for m in layers)
            off = pipe.unet(z, t, encoder_hidden_states=c).sample
    assert torch.equal(off, base), "inside the block every layer must be off: the exact base model"
    assert [m.disable_adapters for m in layers] == [True] + [False] * (len(layers) - 1), "each layer's own state must come back"
    with torch.no_grad():
        assert torch.equal(pipe.unet(z, t, encoder_hidden_states=c).sample, mixed)
    assert trainable and [n for n, p in pipe.unet.named_parameters() if p.requires_grad] == trainable, \
        "the LoRA weights that were trainable before must be trainable again"


def test_conv_lora_round_trips_through_diffusers(toyworld_env, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_base("toyworld")
    n = add_lora(pipe.unet, rank=2, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    _randomise_lora(pipe.unet)
    ours = generate(pipe, ["a sks circle"], [5], num_inference_steps=3, progress=False)[0]
    save_lora(pipe, tmp_path / "lora")
    plain = StableDiffusionPipeline.from_pretrained(toyworld_env / "pipeline", safety_checker=None, requires_safety_checker=False)
    plain.load_lora_weights(tmp_path / "lora")
    assert sum(p.numel() for name, p in plain.unet.named_parameters() if "lora_" in name) == n
    pipe2 = load_base("toyworld")
    pipe2.unet = plain.unet
    theirs = generate(pipe2, ["a sks circle"], [5], num_inference_steps=3, progress=False)[0]
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))


def test_text_encoder_lora_option_trains_and_saves(toyworld_env, concept_dir, tmp_path):
    import peft
    from packaging.version import Version

    from catlab.models import load_lora

    cfg = _cfg(concept_dir, tmp_path / "te", steps=2, checkpoint_every=0, train_text_encoder=True, regime="none")
    if Version(peft.__version__) < Version("0.22"):  # transformers 5 refuses text-encoder adapters with older peft
        with pytest.raises(RuntimeError, match="Upgrade peft, or train the UNet only"):
            train(cfg)
        return
    res = train(cfg)
    keys = load_file(res.adapter_dir / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = load_base("toyworld")
    load_lora(pipe, res.adapter_dir, "te")
    assert "te" in pipe.text_encoder.peft_config
