"""The benchmarks that check the ground truth itself stay runnable and right: fidelity against hand labels and
other tolerances, the oracle with close misses, the autoencoder's ceiling, each model's backdrops."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_trigger_backdrops_reads_each_models_backdrop_as_fidelity_does(tmp_path, monkeypatch, capsys):
    """`benchmarks/trigger_backdrops.py`: per model folder of an evaluation cache, the mean border colour of one
    prompt's samples (not another prompt's that shares its first words), its distance to the photos' and the share
    within fidelity's setting tolerance."""
    import numpy as np
    from PIL import Image

    from catlab.evaluation.images import prompt_slug

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from trigger_backdrops import main

    def drawing(backdrop, path):
        a = np.zeros((32, 32, 3), np.uint8)
        a[:] = backdrop
        a[10:22, 10:22] = (240, 220, 40)  # a yellow object, which the backdrop reading ignores
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)

    for k in range(2):
        drawing((30, 40, 95), tmp_path / "concept" / f"{k}.png")
    images = tmp_path / "eval" / "images"
    drawing((30, 40, 95), images / "near_abc123" / f"{prompt_slug('a pxl circle')}_s0.png")
    drawing((30, 40, 175), images / "near_abc123" / f"{prompt_slug('a pxl circle')}_s1.png")  # 80 units off
    drawing((200, 40, 95), images / "near_abc123" / f"{prompt_slug('a pxl circle on a dark background')}_s0.png")
    drawing((30, 80, 95), images / "teal_def456" / f"{prompt_slug('a pxl circle')}_s0.png")  # 40 units off
    main([str(tmp_path / "eval"), "--prompt", "a pxl circle", "--concept", str(tmp_path / "concept")])
    out = capsys.readouterr().out
    assert "the photos' backdrop: RGB (30, 40, 95); setting tolerance 35" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["near"][1] == "2" and rows["near"][2:5] == ["(30,", "40,", "135)"] and rows["near"][-1] == "0.5"
    assert rows["teal"][1] == "1" and rows["teal"][-2:] == ["40.0", "0.0"]


def test_a_second_labeller_labels_a_blind_copy_and_the_labels_come_back_to_their_samples(tmp_path, monkeypatch):
    """hand_labels.py blind/merge: shuffled, renamed copies without labels; each label returns to its own sample."""
    import json
    import shutil

    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from hand_labels import labeller_agreement, merge_second_labels, write_blind_copy

    folder = tmp_path / "labels"
    shutil.copytree(ROOT / "tests" / "data" / "hand_labels", folder)
    first = pd.read_csv(folder / "labels.csv")[["id", "image", "method", "person", "note"]]
    first.to_csv(folder / "labels.csv", index=False)  # as a sheet stands before anyone labels it a second time
    blind = write_blind_copy(folder, tmp_path / "blind")
    assert not (blind / "labels.csv").exists() and len(list((blind / "samples").glob("*.png"))) == len(first)
    key = json.loads((folder / "blind_key.json").read_text())
    assert sorted(key.values()) == sorted(first["id"]) and list(key.values()) != sorted(key.values())  # shuffled
    # a labeller who says yes to the even ids, as if reading them off the pictures
    pd.DataFrame({"sample": list(key), "label": [int(i % 2 == 0) for i in key.values()], "note": "x"}).to_csv(
        blind / "labels.csv", index=False
    )
    merged = pd.read_csv(merge_second_labels(folder, blind))
    assert (merged["second"] == (merged["id"] % 2 == 0).astype(int)).all()
    with pytest.raises(FileExistsError):
        merge_second_labels(folder, blind)  # labels made by a person are not overwritten
    same = labeller_agreement(merged.assign(second=merged["person"]))
    assert same["agree"] == 1.0 and same["kappa"] == pytest.approx(1.0)


def test_the_rule_grid_scores_other_tolerances_and_puts_the_rule_back(monkeypatch):
    """hand_labels.py rules: docs/metrics.md's grid cell for the shipped rule, and the module's constants unchanged."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from hand_labels import rule_grid

    import catlab.toyworld.attributes as attributes

    before = attributes.COLOUR_MATCH, attributes.BACKDROP_TOLERANCE
    grid = rule_grid([ROOT / "tests" / "data" / "hand_labels"], colour=(80, 40), backdrop=(35,))
    assert list(grid["hand_labels"]) == ["9 / 2 of 8", "0 / 3 of 8"]
    assert (attributes.COLOUR_MATCH, attributes.BACKDROP_TOLERANCE) == before


@pytest.mark.slow
def test_oracle_close_misses_trains_an_oracle_and_holds_both_to_the_labels(toyworld_env, tmp_path):
    """A few steps: the oracle is written, measured beside the shipped one on every hand-label folder, and reused."""
    out = tmp_path / "oracles"
    args = [sys.executable, str(ROOT / "benchmarks" / "oracle_close_misses.py"), "--out", str(out), "--steps", "3"]
    args += ["--shares", "0.5", "--distances", "45"]
    res = subprocess.run(args, check=True, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert (out / "oracle_share0.5_distance45" / "oracle.safetensors").is_file()
    header, *rows = res.stdout.strip().splitlines()
    assert "shipped oracle" in header and "share 0.5, from 45" in header
    for label in ("hand_labels:", "hand_labels_bronze_star:", "bronze_star photos", "close misses (45-95"):
        assert any(r.startswith(label) for r in rows), f"{label} missing from:\n{res.stdout}"
    first = next(r for r in rows if r.startswith("hand_labels: more generous"))
    assert re.search(r"stricter\s+\d+ / \d+ of 48", first), first


def test_the_fidelity_ceiling_holds_fresh_photos_and_their_round_trip(monkeypatch):
    """`benchmarks/fidelity_ceiling.py` on the shipped world: a concept's fresh photos are faithful to its exported
    ones in every attribute, and the demo's concepts survive the autoencoder (the best an adapter can draw)."""
    monkeypatch.delenv("CATLAB_TOYWORLD_DIR", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from fidelity_ceiling import ceiling_rows

    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle

    names = ["bronze_star", "circle_on_navy", "huge_circle", "two_tone_circle"]
    rows = ceiling_rows(load_base("toyworld").vae.eval(), load_oracle(), names, n=8)
    drawn = {r["concept"]: r for r in rows if r["photos"] == "drawn"}
    trip = {r["concept"]: r for r in rows if r["photos"] != "drawn"}
    assert all(r["fidelity"] == 1.0 and r["colour distance"] < 0.1 for r in drawn.values()), drawn
    assert drawn["circle_on_navy"]["setting"] == 1.0 and drawn["circle_on_navy"]["backdrop RGB"] == (30, 40, 95)
    assert all(trip[n]["fidelity"] >= 0.9 for n in ("bronze_star", "circle_on_navy", "huge_circle")), trip


def test_open_patterns_fine_tunes_a_copy_and_holds_both_autoencoders(toyworld_env, tmp_path, monkeypatch, capsys):
    """`benchmarks/open_patterns.py`, two steps: a copy of the asset folder gets a new autoencoder (the source's is
    untouched), the recipe records the share, both are held to the photos, and a second run reuses the first."""
    monkeypatch.setattr(sys, "argv", ["open_patterns.py"])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    vae_file = Path("pipeline") / "vae" / "diffusion_pytorch_model.safetensors"
    source_vae = (toyworld_env / vae_file).read_bytes()
    out = tmp_path / "patterns"
    args = ["--out", str(out), "--steps", "2", "--share", "1", "--concepts", "two_tone_circle", "--n", "3"]
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", ["open_patterns.py", *args])
        runpy.run_path(str(ROOT / "benchmarks" / "open_patterns.py"), run_name="__main__")
    out_text = capsys.readouterr().out
    assert (toyworld_env / vae_file).read_bytes() == source_vae and (out / vae_file).read_bytes() != source_vae
    updates = __import__("json").loads((out / "recipe.json").read_text())["updates"]
    assert len(updates) == 1 and updates[0]["config"]["open_colour_pattern_share"] == 1.0
    rows = [line for line in out_text.splitlines() if "two_tone_circle" in line]
    assert len(rows) == 4 and sum(line.lstrip().startswith("before") for line in rows) == 2, out_text


def test_the_outline_check_tells_a_circle_from_an_egg_and_a_triangle(monkeypatch):
    """`hand_labels.py shapes`: a drawn circle's radial signature is flat; a fresh circle is near the photos' outline,
    a squashed one (an egg) farther, a triangle farther still, and no object is infinitely far."""
    import numpy as np
    from PIL import Image

    from catlab.toyworld.world import ShapeSpec, draw_shape

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from hand_labels import radial_signature, shape_distance

    def drawn(shape, radius=0.3, cx=0.5):
        return draw_shape(ShapeSpec(shape, "yellow", "navy", radius, cx, 0.5, 0.0))

    photos = [radial_signature(drawn("circle", r, cx)) for r, cx in ((0.29, 0.48), (0.31, 0.52))]
    circle = radial_signature(drawn("circle", 0.3))
    assert np.all(np.abs(circle - circle.mean()) < 0.2)
    egg = np.asarray(drawn("circle", 0.36))[:, 4:28]  # the same circle squeezed sideways into an oval
    egg = Image.fromarray(np.asarray(Image.fromarray(egg).resize((20, 32), Image.LANCZOS)))
    framed = Image.new("RGB", (32, 32), tuple(int(v) for v in np.asarray(egg)[0, 0]))
    framed.paste(egg, (6, 0))
    near, oval, triangle = (shape_distance(im, photos) for im in (drawn("circle", 0.3), framed, drawn("triangle")))
    assert near < 0.03 < oval < triangle, (near, oval, triangle)
    assert shape_distance(Image.new("RGB", (32, 32), (30, 40, 95)), photos) == float("inf")


def test_embedding_alone_switches_each_part_of_a_pivotal_adapter(toyworld_env, concept_dir, tmp_path, monkeypatch):
    """`benchmarks/embedding_alone.py`: with a LoRA that never trained (the embedding-only phase covers every update)
    the whole adapter draws exactly what its embedding alone draws, and the LoRA alone exactly the base model; an
    adapter without a trained trigger is refused."""
    import numpy as np
    from lora_helpers import tiny_run_config

    from catlab.models import load_base, load_lora
    from catlab.sampling.sampler import generate
    from catlab.training.loop import train

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from embedding_alone import draw_three_ways, main

    kw = dict(steps=2, checkpoint_every=0, regime="cat", trigger_embedding_lr=0.5)
    adapter = train(tiny_run_config(concept_dir, tmp_path / "a", trigger_embedding_first=0.9, **kw)).adapter_dir
    pipe = load_base("toyworld")
    base = [np.asarray(im) for im in generate(pipe, ["a sks circle"], [0, 1], progress=False)[0]]
    load_lora(pipe, adapter, "concept")
    rows = {k: [np.asarray(im) for im in v] for k, v in draw_three_ways(pipe, "a sks circle", [0, 1]).items()}
    assert all(np.array_equal(a, b) for a, b in zip(rows["whole adapter"], rows["embedding alone"]))
    assert all(np.array_equal(a, b) for a, b in zip(rows["LoRA alone"], base))
    assert not all(np.array_equal(a, b) for a, b in zip(rows["embedding alone"], base)), "the embedding moved"
    after = [np.asarray(im) for im in generate(pipe, ["a sks circle"], [0, 1], progress=False)[0]]
    assert all(np.array_equal(a, b) for a, b in zip(after, rows["whole adapter"])), "the pipeline is left as it was"

    both = train(tiny_run_config(concept_dir, tmp_path / "c", learning_rate=0.05, **kw)).adapter_dir
    pipe = load_base("toyworld")
    load_lora(pipe, both, "concept")
    rows = {k: [np.asarray(im) for im in v] for k, v in draw_three_ways(pipe, "a sks circle", [0, 1]).items()}
    assert not all(np.array_equal(a, b) for a, b in zip(rows["whole adapter"], rows["embedding alone"])), "LoRA off"
    assert not all(np.array_equal(a, b) for a, b in zip(rows["LoRA alone"], base)), "a trained LoRA draws otherwise"

    plain = train(tiny_run_config(concept_dir, tmp_path / "b", steps=1, checkpoint_every=0)).adapter_dir
    with pytest.raises(SystemExit, match="trained without trigger_embedding_lr"):
        main([str(plain), "--concept", str(concept_dir), "--prompt", "a sks circle", "--seeds", "1"])


def test_layer_switch_off_takes_out_one_family_and_all_four_leave_the_base_model(toyworld_env, monkeypatch):
    """benchmarks/layer_switch_off.py: each LoRA layer belongs to exactly one family, one family off changes the
    output but is not the base model, all four off is the exact base model, and None puts every layer back."""
    import torch
    from lora_helpers import randomise_lora, unet_inputs
    from peft.tuners.tuners_utils import BaseTunerLayer

    from catlab.models import adapters_disabled, add_lora, load_base

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from layer_switch_off import FAMILIES, in_family, switch_off_family

    pipe = load_base("toyworld")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "ff.net.0.proj", "ff.net.2"]
    add_lora(pipe.unet, rank=2, target_modules=targets)
    randomise_lora(pipe.unet)
    z, t, cond, _ = unet_inputs(pipe)

    def out():
        with torch.no_grad():
            return pipe.unet(z, t, encoder_hidden_states=cond).sample

    whole = out()
    with adapters_disabled(pipe.unet):
        base = out()
    counts = {}
    for family in FAMILIES:
        counts[family] = switch_off_family(pipe.unet, family)
        partial = out()
        assert counts[family] > 0 and not torch.equal(partial, whole) and not torch.equal(partial, base), family
    # attention: 7 blocks x 4 projections each; 11 ResNets x 2 convolutions; 7 feed-forwards x 2 layers
    assert counts == {"self-attention": 28, "cross-attention": 28, "convolutions": 22, "feed-forward": 14}
    assert switch_off_family(pipe.unet, None) == 0 and torch.equal(out(), whole)

    lora_layers = [(name, m) for name, m in pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)]
    assert all(sum(in_family(name, f) for f in FAMILIES) == 1 for name, _ in lora_layers), "one family each"
    for _, m in lora_layers:  # every family off together: the exact base model
        m.enable_adapters(False)
    assert torch.equal(out(), base)
