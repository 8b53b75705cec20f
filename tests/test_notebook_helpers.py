"""What the notebooks call besides set-up: runs that are reused or resumed instead of overwritten, Colab's doors
behind a fake seam, uploads that never overwrite a user's file, and the tables notebooks 03-05 show."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from eval_fakes import mean_colour
from lora_helpers import tiny_run_config

from catlab.widgets import (
    ColabSeam,
    offer_download,
    outputs_on_drive,
    save_photos,
    save_uploads,
    train_or_resume,
    upload_photos,
)


def _tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(adapter_dir / "pytorch_lora_weights.safetensors")


def _same(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_reused_an_interrupted_one_resumed_and_other_settings_refused(
    toyworld_env, concept_dir, tmp_path, capsys
):
    cfg = tiny_run_config(concept_dir, tmp_path / "run", steps=4, checkpoint_every=2)
    first = train_or_resume(cfg, progress=False)
    weights = _tensors(first.adapter_dir)
    again = train_or_resume(cfg, progress=False)
    assert "already trained with these settings; reusing it" in capsys.readouterr().out
    assert _same(_tensors(again.adapter_dir), weights) and len(again.history) == 4

    # an interruption after the step-2 checkpoint: the adapter is gone, the checkpoint is there
    shutil.rmtree(first.adapter_dir)
    resumed = train_or_resume(cfg, progress=False)
    assert "resuming from its last checkpoint" in capsys.readouterr().out
    assert _same(_tensors(resumed.adapter_dir), weights)  # exact resume

    # interrupted before its first checkpoint: trained again, to the same weights
    shutil.rmtree(first.adapter_dir)
    shutil.rmtree(first.output_dir / "checkpoints")
    again = train_or_resume(cfg, progress=False)
    assert "no checkpoint to resume from; training it again" in capsys.readouterr().out
    assert _same(_tensors(again.adapter_dir), weights)

    with pytest.raises(FileExistsError, match=r"other settings \(learning_rate differ\).*fresh=True"):
        train_or_resume(tiny_run_config(concept_dir, tmp_path / "run", steps=4, checkpoint_every=2, learning_rate=1e-2))


def test_a_reused_run_ends_its_monitor_with_the_history_and_grid_it_recorded(toyworld_env, concept_dir, tmp_path):
    """Clicking Train again with the same settings reuses the run: the monitor must still say 'done' and show it."""
    from catlab.widgets import LiveTrainingMonitor

    cfg = tiny_run_config(concept_dir, tmp_path / "run", steps=4, checkpoint_every=0, validate_every=2)
    first = train_or_resume(cfg, progress=False)
    monitor = LiveTrainingMonitor(4, title="again")
    again = train_or_resume(cfg, callbacks=[monitor], progress=False)
    assert again.reused and not first.reused
    assert "done" in monitor.status.value and "4 steps" in monitor.status.value
    assert [h["step"] for h in monitor.history] == [1, 2, 3, 4]
    assert [step for step, _ in monitor.grids] == [2, 4]  # the grids the run saved under validation/


class FakeFiles:
    def __init__(self, uploads):
        self.uploads, self.downloaded = uploads, []

    def upload(self):
        return self.uploads

    def download(self, path):
        self.downloaded.append(path)


class FakeDrive:
    def __init__(self):
        self.mounted = []

    def mount(self, where):
        self.mounted.append(where)


def test_colab_photos_drive_and_download_through_the_seam(tmp_path, capsys):
    big = bytes(range(256)) * 12_000  # a 3 MB "phone photo": Colab's own upload has no size limit
    seam = ColabSeam(FakeFiles({"IMG_0001.jpg": big, "../escape.png": b"png"}), FakeDrive())
    paths = upload_photos(tmp_path / "photos", seam=seam)
    assert [p.name for p in paths] == ["IMG_0001.jpg", "escape.png"] and paths[0].read_bytes() == big
    assert not (tmp_path / "escape.png").exists(), "a name from the browser never becomes a path"

    drive = outputs_on_drive("catlab-runs", seam=seam, drive_root=tmp_path / "drive")
    assert (
        seam.drive.mounted == [str(tmp_path / "drive")]
        and drive == tmp_path / "drive" / "MyDrive" / "catlab-runs"
        and drive.is_dir()
    )

    lora = tmp_path / "lora_webui.safetensors"
    lora.write_bytes(b"weights")
    offer_download(lora, seam=seam)
    assert seam.files.downloaded == [str(lora)]
    with pytest.raises(FileNotFoundError, match="train an adapter first"):
        offer_download(tmp_path / "missing.safetensors", seam=seam)


def test_outside_colab_the_helpers_say_what_to_do(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="copy your photos into"):
        upload_photos(tmp_path)
    with pytest.raises(RuntimeError, match="set out_root"):
        outputs_on_drive()
    lora = tmp_path / "lora_webui.safetensors"
    lora.write_bytes(b"weights")
    offer_download(lora)
    assert f"your LoRA: {lora.resolve()}" in capsys.readouterr().out


def test_uploads_never_overwrite_another_file(tmp_path):
    folder = tmp_path / "concept"
    save_photos({"a.png": b"one"}, folder)
    assert save_photos({"a.png": b"one"}, folder) == [folder / "a.png"]  # the same file again: kept
    with pytest.raises(FileExistsError, match="already holds another file; rename the upload"):
        save_photos({"a.png": b"two"}, folder)
    assert (folder / "a.png").read_bytes() == b"one"
    # both FileUpload formats: ipywidgets 8 (tuple of dicts) and 7 (dict by name)
    save_uploads(({"name": "b.png", "content": memoryview(b"bee")},), folder)
    save_uploads({"c.png": {"content": b"sea"}}, folder)
    assert (folder / "b.png").read_bytes() == b"bee" and (folder / "c.png").read_bytes() == b"sea"


def test_summary_groups_split_a_wide_summary_into_narrow_tables():
    from catlab.evaluation.tables import summary_groups

    cols = [
        "IS",
        "PS",
        "KP",
        "KPS",
        "DIV",
        "Vendi",
        "PRES",
        "collapse_rate",
        "identity_acc",
        "paired_preservation",
        "colour_distance",
        "valid_rate",
    ]
    summary = pd.DataFrame(
        {"method": ["base", "cat"], **{f"{c}_{k}": [0.5, 0.6] for c in cols for k in ("mean", "ci95")}}
    )
    tables = summary_groups(summary)
    assert [list(t.columns)[1::2] for t in tables] == [
        ["IS_mean", "PS_mean", "KP_mean", "KPS_mean"],
        ["DIV_mean", "Vendi_mean", "PRES_mean"],
        ["collapse_rate_mean", "identity_acc_mean", "paired_preservation_mean", "colour_distance_mean"],
        ["valid_rate_mean"],
    ]
    assert all(t.columns[0] == "method" for t in tables)


def _sweep():
    runs = pd.DataFrame(
        [
            {
                "name": "reference",
                "cat_lambda": 1.0,
                "rank": 4,
                "cat_every": 1,
                "steps": 40,
                "adapter": "a",
                "train_s": 10.0,
                "ms_per_step": 250.0,
            },
            {
                "name": "cat_lambda=0",
                "cat_lambda": 0.0,
                "rank": 4,
                "cat_every": 1,
                "steps": 40,
                "adapter": "b",
                "train_s": 4.0,
                "ms_per_step": 100.0,
            },
            {
                "name": "cat_every=3",
                "cat_lambda": 1.0,
                "rank": 4,
                "cat_every": 3,
                "steps": 40,
                "adapter": "c",
                "train_s": 6.0,
                "ms_per_step": 150.0,
            },
            {
                "name": "rank=1",
                "cat_lambda": 1.0,
                "rank": 1,
                "cat_every": 1,
                "steps": 40,
                "adapter": "d",
                "train_s": 9.0,
                "ms_per_step": 225.0,
            },
        ]
    )
    summary = pd.DataFrame(
        {
            "method": ["base", "reference", "cat_lambda=0", "cat_every=3", "rank=1"],
            "IS_mean": [0.5, 0.8, 0.9, 0.7, 0.75],
            "KP_mean": [1.0, 0.9, 0.6, 0.85, 0.92],
            "KPS_mean": [0.66, 0.85, 0.72, 0.77, 0.83],
        }
    )
    return runs, summary


def test_ablation_table_joins_each_run_with_its_scores_and_adds_the_base_model():
    from catlab.evaluation.tables import ablation_table

    runs, summary = _sweep()
    table = ablation_table(runs, summary, ["IS", "KP"]).set_index("name")
    assert "adapter" not in table and table.loc["cat_every=3", "KP"] == 0.85 and table.loc["base", "IS"] == 0.5
    assert table["sweep"].to_dict() == {
        "reference": "reference",
        "cat_lambda=0": "cat_lambda",
        "cat_every=3": "cat_every",
        "rank=1": "rank",
        "base": "base",
    }


def test_amortisation_table_compares_time_and_scores_with_every_step_cat():
    from catlab.evaluation.tables import ablation_table, amortisation_table

    runs, summary = _sweep()
    table = ablation_table(runs, summary, ["IS", "KP", "KPS"])
    amortised = amortisation_table(table, {"cat_lambda": 1.0, "rank": 4, "cat_every": 1, "steps": 40}).set_index("name")
    assert list(amortised.index) == [
        "reference",
        "cat_lambda=0",
        "cat_every=3",
    ]  # rank 1 and the base model are other sweeps
    assert amortised.loc["cat_every=3", "time saved vs k=1"] == pytest.approx(0.4)  # 1 - 6 / 10
    assert (
        amortised.loc["cat_lambda=0", "cat_every"] == "no CAT (λ=0)"
        and amortised.loc["cat_every=3", "cat_every"] == "3"
    )


def test_crosstalk_table_reads_identity_leak_and_the_other_concepts_colours():
    """Drawn images read by the shipped oracle: "one adapter" learnt A (two_tone_circle), leaks it into half of
    "a circle", learnt nothing of B, and paints "a square" in A's pink; the base model draws plain shapes."""
    from catlab.evaluation.embedders import CallableEmbedder
    from catlab.evaluation.tables import crosstalk_table
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.world import concept_images, draw_shape, sample_spec

    rng = np.random.default_rng(0)
    plain = {
        shape: [draw_shape(sample_spec(rng, shape=shape, colour="red", background="light")) for _ in range(8)]
        for shape in ("circle", "square")
    }
    pink_squares = [draw_shape(sample_spec(rng, shape="square", colour="pink", background="light")) for _ in range(8)]
    a_images = concept_images("two_tone_circle", n=8)[0]
    base = {
        "a sks circle": plain["circle"],
        "a circle": plain["circle"],
        "a zwx square": plain["square"],
        "a square": plain["square"],
    }
    one = {
        "a sks circle": a_images,
        "a circle": a_images[:4] + plain["circle"][4:],
        "a zwx square": plain["square"],
        "a square": pink_squares,
    }
    from catlab.config import ConceptConfig

    concepts = {
        "two_tone_circle": ConceptConfig("a", "sks", "circle"),
        "striped_square": ConceptConfig("b", "zwx", "square"),
    }
    table = crosstalk_table(
        {"base": base, "one adapter": one}, concepts, CallableEmbedder(mean_colour), oracle=load_oracle()
    )
    one_row, base_row = table.loc["one adapter"], table.loc["base"]
    assert one_row["'sks' draws sks ↑"] == pytest.approx(1.0, abs=0.13) and base_row[
        "'sks' draws sks ↑"
    ] == pytest.approx(0.0, abs=0.13)
    assert one_row["'a circle' read as sks ↓"] == pytest.approx(0.5, abs=0.13) and one_row[
        "'zwx' draws zwx ↑"
    ] == pytest.approx(0.0, abs=0.13)
    assert one_row["'a square' in sks's colours ↓"] == pytest.approx(1.0, abs=0.13)
    assert base_row["'a square' in sks's colours ↓"] == pytest.approx(0.0, abs=0.13)
    assert base_row["KP 'a circle' ↑"] == pytest.approx(1.0) and one_row["KP 'a square' ↑"] < 0.999  # pink is not red


def test_a_slider_view_says_in_its_status_when_drawing_fails():
    """An observer's exception goes only to the kernel's log: the view must not sit at 'drawing …' forever."""
    from PIL import Image

    from catlab.widgets import slider_view

    def render(s):
        if s > 1:
            raise TypeError("generate_methods() argument after ** must be a mapping")
        return Image.new("RGB", (8, 8))

    box = slider_view(render, 1.0, max=1.5, description="adapter scale")
    slider, status, _ = box.children
    assert status.value == "adapter scale = 1"
    with pytest.raises(TypeError):
        slider.value = 1.5
    assert "could not draw adapter scale = 1.5" in status.value and "TypeError" in status.value
