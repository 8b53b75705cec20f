"""The config fields a real SD 1.5 run needs: numbers written as 1e-4, how the base model is loaded (and recorded in
the adapter), and the validation prompts, with the errors a mistake in them gets."""

from __future__ import annotations

import pytest

from catlab.config import ConceptConfig, TrainConfig, expand_validation_prompts, load_config, load_yaml

CONCEPT = {"folder": "photos/teapot", "trigger": "sks", "class_word": "teapot"}


def test_exponent_numbers_are_floats_in_a_config_file_and_in_set(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; catlab reads it as YAML 1.2 does. Integers and words stay what they were."""
    from catlab.cli.commands import parse_overrides

    assert load_yaml("a: 1e-4\nb: 5E3\nc: -2e+2\nd: 10\ne: 1.5\nf: sks1e4\ng: [1e-3, 2]") == {
        "a": 1e-4,
        "b": 5000.0,
        "c": -200.0,
        "d": 10,
        "e": 1.5,
        "f": "sks1e4",
        "g": [1e-3, 2],
    }
    (tmp_path / "run.yaml").write_text("learning_rate: 1e-4\ncat_lambda: 2e0\nsteps: 900\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.learning_rate, cfg.cat_lambda, cfg.steps) == (1e-4, 2.0, 900)
    assert parse_overrides(["learning_rate=1e-4", "validation_guidance=7.5", "output_dir=runs/1e5"]) == {
        "learning_rate": 1e-4,
        "validation_guidance": 7.5,
        "output_dir": "runs/1e5",
    }


def test_steps_written_as_an_exponent_still_name_the_field():
    with pytest.raises(ValueError, match=r"steps=900.0: expected int"):
        TrainConfig.from_dict({"steps": load_yaml("9e2")})


def test_loading_fields_reach_load_base_and_the_adapter_metadata():
    from catlab.training.start import run_metadata

    plain = TrainConfig(concepts=[CONCEPT])
    assert plain.loading_options() == {}
    assert not {"base_revision", "base_variant", "vae"} & set(run_metadata(plain))
    cfg = TrainConfig(
        concepts=[CONCEPT],
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        variant="fp16",
        revision="451f4fe",
        vae="stabilityai/sd-vae-ft-mse",
        single_file_config="configs/sd15",
    )
    assert cfg.loading_options() == {
        "variant": "fp16",
        "revision": "451f4fe",
        "vae": "stabilityai/sd-vae-ft-mse",
        "config": "configs/sd15",
    }
    meta = run_metadata(cfg)
    recorded = (meta["base_revision"], meta["base_variant"], meta["vae"])
    assert recorded == ("451f4fe", "fp16", "stabilityai/sd-vae-ft-mse")


def test_validation_prompts_default_to_trigger_and_class_for_every_concept():
    cfg = TrainConfig(concepts=[CONCEPT, {"folder": "photos/mug", "trigger": "zwx", "class_word": "mug"}])
    prompts = expand_validation_prompts(cfg.validation_prompts, cfg.concepts)
    assert prompts == ["a sks teapot", "a teapot", "a zwx mug", "a mug"]


def test_validation_prompts_are_filled_in_once_each():
    concepts = [ConceptConfig("a", "sks", "dog"), ConceptConfig("b", "zwx", "dog")]
    templates = ["a photo of {trigger} {class} on the beach", "a {class}", "a watercolour landscape"]
    assert expand_validation_prompts(templates, concepts) == [
        "a photo of sks dog on the beach",
        "a dog",
        "a watercolour landscape",
        "a photo of zwx dog on the beach",
    ]


def test_bad_validation_settings_are_named_with_a_fix():
    with pytest.raises(ValueError) as e:
        TrainConfig(validation_prompts=["a {trigger} {klass}"], validation_steps=0, validation_guidance=0.5)
    message = str(e.value)
    assert "validation_prompts: prompt template 'a {trigger} {klass}': only {trigger} and {class}" in message
    assert "validation_steps=0: must be >= 1" in message and "validation_guidance=0.5: must be >= 1" in message
    with pytest.raises(ValueError, match=r"validation_prompts=\[\]: give at least one"):
        TrainConfig(validation_prompts=[])
    cfg = TrainConfig(
        validation_prompts=["{trigger} {class}, studio light"],
        validation_negative_prompt="blurry",
        validation_steps=30,
        validation_guidance=7.0,
        validation_base_row=True,
    )
    assert (cfg.validation_steps, cfg.validation_guidance, cfg.validation_base_row) == (30, 7.0, True)
