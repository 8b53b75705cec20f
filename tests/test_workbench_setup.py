"""The notebooks' set-up helper: the parameters cell wins over the world preset, None takes the preset's value, a bad
world is refused clearly, and `make_train_config` gives the TrainConfig a notebook would build by hand.

No model is loaded: `setup_notebook` only reads presets and concept folders, so the SD 1.5 preset is checked with
the hub switched off.
"""

from __future__ import annotations

import pytest

from catlab.config import ConceptConfig, TrainConfig
from catlab.widgets import SD15_MODEL, SIZES, WORLDS, make_train_config, setup_notebook


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a set-up that reached for the hub would fail here
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _sd15(tmp_path, concept_dir, **sizes):
    wb = setup_notebook("sd15", tmp_path, "nb", concept_folder=concept_dir, **sizes)
    wb.restore_notices()
    wb.device = "cuda"  # as on a GPU machine: the preset's mixed precision applies
    return wb


def test_parameters_win_over_the_sd15_preset(tmp_path, concept_dir, capsys):
    wb = _sd15(tmp_path, concept_dir, steps=40, rank=4, learning_rate=2e-3, batch_size=4, sample_steps=10, seeds=[0, 1])
    assert (wb.steps, wb.rank, wb.learning_rate, wb.batch_size, wb.sample_steps, wb.seeds) == (
        40,
        4,
        2e-3,
        4,
        10,
        [0, 1],
    )
    note = capsys.readouterr().out
    assert "not the 'sd15' preset" in note and "steps=40 (preset 900)" in note and "rank=4 (preset 1)" in note, note
    cfg = make_train_config(wb, "run", regime="cat")
    assert (cfg.steps, cfg.rank, cfg.learning_rate, cfg.batch_size) == (40, 4, 2e-3, 4)
    assert cfg.base_model == SD15_MODEL and cfg.resolution == 512 and cfg.mixed_precision == "fp16"


def test_none_takes_the_preset(tmp_path, concept_dir, capsys):
    wb = _sd15(
        tmp_path, concept_dir, steps=None, rank=None, learning_rate=None, batch_size=None, sample_steps=None, seeds=None
    )
    preset = WORLDS["sd15"]
    assert {k: getattr(wb, k) for k in SIZES} == {k: getattr(preset, k) for k in SIZES}
    assert "preset:" not in capsys.readouterr().out  # nothing given, nothing to note
    assert wb.base_model == SD15_MODEL and wb.sampling == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert wb.concept == ConceptConfig(str(concept_dir), "sks", "circle")  # from the folder's concept.json
    mixed = _sd15(tmp_path, concept_dir, steps=100)  # one given, the rest from the preset
    assert (mixed.steps, mixed.rank, mixed.learning_rate) == (100, 1, 1e-4)


def test_a_given_train_config_field_wins_and_none_keeps_the_preset(tmp_path, concept_dir):
    wb = _sd15(tmp_path, concept_dir, steps=None)
    cfg = make_train_config(wb, "run", regime="lora", steps=None, rank=8, validate_every=150, resolution=None)
    assert (cfg.steps, cfg.rank, cfg.validate_every, cfg.resolution, cfg.regime) == (900, 8, 150, 512, "lora")


def test_a_bad_world_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"world='sdxl'.*'sd15'.*'toy'"):
        setup_notebook("sdxl", tmp_path, "nb")
    assert not (tmp_path / "nb").exists()  # refused before anything was written


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(TypeError, match="unknown run size"):
        setup_notebook("toy", tmp_path, "nb", stepz=10)
    with pytest.raises(ValueError, match="single folder name"):
        setup_notebook("toy", tmp_path, "")  # would clear out_root itself
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="single folder name"):
        setup_notebook("toy", tmp_path / "sub", "..")
    assert (tmp_path / "keep.txt").exists()
    inside = tmp_path / "nb" / "concept"
    inside.mkdir(parents=True)
    with pytest.raises(ValueError, match="which fresh=True clears"):
        setup_notebook("toy", tmp_path, "nb", concept_folder=inside, fresh=True)
    assert inside.is_dir()  # the concept folder was not removed


def test_toy_train_config_equals_the_hand_built_one(tmp_path):
    wb = setup_notebook("toy", tmp_path, "nb", concept="bronze_star")
    wb.restore_notices()
    concept = ConceptConfig(str(tmp_path / "nb" / "concept"), "vfy", "star")
    assert wb.concept == concept and (tmp_path / "nb" / "concept" / "concept.json").is_file()
    got = make_train_config(
        wb, "train/cat", regime="cat", cat_null_share=0.5, cat_anchor="class", random_flip=False, target_modules=None
    )
    by_hand = TrainConfig(
        base_model="toyworld",
        concepts=[concept],
        output_dir=str(tmp_path / "nb" / "train" / "cat"),
        regime="cat",
        cat_null_share=0.5,
        cat_anchor="class",
        rank=4,
        steps=40,
        learning_rate=2e-3,
        batch_size=4,
        random_flip=False,
        validate_every=0,
        checkpoint_every=0,
        checkpoints_total_limit=2,
        validation_seeds=[0, 1, 2, 3],
        resolution=32,
        mixed_precision="no",
    )
    assert got == by_hand
    assert make_train_config(wb, "train/cat", regime="cat") != by_hand  # the explicit fields did matter


def test_earlier_runs_are_kept_unless_fresh(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "earlier.txt").write_text("an earlier run")
    setup_notebook("toy", tmp_path, "nb").restore_notices()
    assert (tmp_path / "nb" / "earlier.txt").read_text() == "an earlier run"
    setup_notebook("toy", tmp_path, "nb", fresh=True).restore_notices()
    assert not (tmp_path / "nb" / "earlier.txt").exists() and (tmp_path / "nb").is_dir()


def test_the_sd15_preset_checkpoints_so_a_disconnect_loses_little(tmp_path, concept_dir):
    cfg = make_train_config(_sd15(tmp_path, concept_dir), "run", regime="cat")
    assert cfg.checkpoint_every == 150 and cfg.checkpoints_total_limit == 2


def test_a_named_recipe_goes_between_the_preset_and_the_given_fields(tmp_path):
    from catlab.config import RECIPES

    wb = setup_notebook("toy", tmp_path, "nb", concept="circle_on_navy")
    wb.restore_notices()
    cfg = make_train_config(wb, "run", regime="cat", recipe="demo", cat_lambda=None, steps=12)
    assert all(getattr(cfg, k) == v for k, v in RECIPES["demo"].items() if k != "steps")
    assert cfg.steps == 12 and cfg.resolution == 32  # a given field wins; the world's own settings stay
    with pytest.raises(ValueError, match="unknown recipe 'dmeo'"):
        make_train_config(wb, "run", regime="cat", recipe="dmeo")


def test_notices_are_quiet_until_the_notebook_restores_them(tmp_path):
    import diffusers.utils.logging as dlog

    dlog.set_verbosity_warning()
    before = dlog.get_verbosity()
    wb = setup_notebook("toy", tmp_path, "nb")
    assert dlog.get_verbosity() == dlog.ERROR
    wb.restore_notices()
    assert dlog.get_verbosity() == before
    wb.restore_notices()  # twice is harmless
    assert dlog.get_verbosity() == before
