"""The benchmark scripts behind docs/results.md stay runnable: each parses its arguments, and the sweep that chose
the demo recipe runs end to end on a tiny budget (its numbers mean nothing here; they belong to the benchmark)."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help(script, capsys, monkeypatch):
    """Each script runs as `python benchmarks/x.py --help` would, in this process (no interpreter start each)."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))  # the scripts import their neighbours
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:"), out[-2000:]


def test_an_adapter_fingerprint_changes_with_any_bit_and_nothing_else(tmp_path, monkeypatch):
    """`benchmarks/adapter_fingerprint.py`: the same tensors give the same fingerprint whatever the file's key order;
    one changed bit or name gives another."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from adapter_fingerprint import fingerprint

    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(4)
    save_file({"x.lora_A": a, "y.lora_B": b}, tmp_path / "one.safetensors")
    save_file({"y.lora_B": b, "x.lora_A": a.clone()}, tmp_path / "same.safetensors")
    flipped = a.clone()
    flipped.view(torch.int32)[0, 0] ^= 1  # the last bit of one number
    save_file({"x.lora_A": flipped, "y.lora_B": b}, tmp_path / "bit.safetensors")
    save_file({"x.lora_A": a, "z.lora_B": b}, tmp_path / "name.safetensors")
    prints = {name: fingerprint(tmp_path / f"{name}.safetensors") for name in ("one", "same", "bit", "name")}
    assert prints["one"] == prints["same"] and len({prints["one"], prints["bit"], prints["name"]}) == 3


def test_a_variant_spells_list_fields_with_plus(monkeypatch):
    """`--variant target_modules=attn2.to_k+attn2.to_v` sets a list field; the run's name keeps every item."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from unconditional_source import parse_variant

    v = parse_variant("regime=lora,target_modules=attn2.to_k+attn2.to_v,learning_rate=0")
    assert v["fields"] == {"regime": "lora", "target_modules": ["attn2.to_k", "attn2.to_v"], "learning_rate": 0.0}
    assert v["name"] == "v_regimelora_target_modulesattn2pto_k+attn2pto_v_learning_rate0p0"
    # a field whose default is None takes text, and the name has no spaces (it names the run's folder)
    other = parse_variant("class_prompt=a circle,trigger_embedding_init={class}")
    assert other["fields"] == {"class_prompt": "a circle", "trigger_embedding_init": "{class}"}
    assert other["name"] == "v_class_prompta-circle_trigger_embedding_init{class}"


@pytest.mark.slow
def test_regime_sweep_runs_and_prints_ground_truth_scores(toyworld_env, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "regime_sweep.py"),
            "--steps",
            "2",
            "--class-samples",
            "2",
            "--trigger-samples",
            "2",
            "--class-images",
            "2",
            "--sample-steps",
            "5",
            "--concept",
            "bronze_star",
            "lora:0",
            "cat:1:0.5:class",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if re.match(r"^(base|lora:0|cat:1:0\.5:class)\s", line)]
    assert [r.split()[0] for r in rows] == ["base", "lora:0", "cat:1:0.5:class"], res.stdout[-2000:]
    for row in rows:
        for score in ("collapse", "identity", "paired", "colour-dist", "valid/base"):
            assert re.search(rf"{re.escape(score)} \d\.\d\d", row), f"{score} missing from: {row}"


@pytest.mark.slow
def test_multi_concept_trains_combines_and_scores_every_model_on_every_concept(toyworld_env, tmp_path):
    """One set, plain LoRA and CAT, one seed, a few steps: every way of making a multi-concept model is scored.

    One set keeps the suite within its time (two sets took 1.8 times as long): every set runs the same code."""
    out = tmp_path / "multi"
    args = [sys.executable, str(ROOT / "benchmarks" / "multi_concept.py"), "--quick", "--out", str(out), "--seeds", "0",
            "--sets", "same", "--methods", "lora,cat"]  # fmt: skip
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode in (0, 1), res.stderr[-3000:]  # 1: a claim failed, as it must on a few steps
    import pandas as pd

    table = pd.read_csv(out / "table.csv")
    assert set(table["how"]) >= {"one adapter", "sum", "linear", "single circle_on_navy", "single huge_circle"}
    assert set(table["set"]) == {"same"}, "only the sets asked for"
    assert set(table["concept"]) == {"circle_on_navy", "huge_circle"}
    assert (out / "runs" / "cat_circle_on_navy+huge_circle_seed0" / "adapter").is_dir()
    assert (out / "combined" / "lora_linear_circle_on_navy+huge_circle_seed0").is_dir()
    for line in (
        "same / cat / sum: cross-talk <= 0.05",
        "same / cat / one adapter: every untouched prompt paired >= 0.8",
    ):
        assert line in res.stdout, res.stdout[-2000:]
    assert "| same | CAT | one adapter | " in res.stdout  # docs/results.md's table, a row per model
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "trained" not in again.stdout, "finished trainings are reused"
    reported = subprocess.run([*args, "--report"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert reported.stdout == again.stdout, "--report prints what the run printed, from its CSVs"


@pytest.mark.slow
def test_anchor_reach_trains_cat_with_more_anchor_prompts_and_scores_each_prompt(toyworld_env, tmp_path):
    out = tmp_path / "reach"
    args = [sys.executable, str(ROOT / "benchmarks" / "anchor_reach.py"), "--quick", "--out", str(out), "--seeds", "0",
            "--anchors", "a square", "--anchor-share", "0.5", "--anchor-share", "1.0"]  # fmt: skip
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("  ")[0] for line in res.stdout.splitlines()[-5:]]
    assert rows[-4:] == ["base", "class only", "+ square", "+ square (cat_share 1)"], res.stdout[-1500:]
    assert "regime: cat" in (out / "runs" / "a-square_share1_seed0" / "config.yaml").read_text()
    assert "cat_share: 1.0" in (out / "runs" / "a-square_share1_seed0" / "config.yaml").read_text()
    assert (out / "class_images" / "a-square" / "a_square").is_dir()  # the anchor prompt's own images
    for prompt in ("a circle", "a square", "a triangle", "a star", "a circle on a dark background"):
        assert prompt in res.stdout


def run_per_seed(*args) -> subprocess.CompletedProcess:
    """`python benchmarks/per_seed.py ARGS`, which must succeed."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "per_seed.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_per_seed_counts_class_colour_changes_against_the_base(tmp_path):
    """Hand-made readings: seed 0 keeps its colour under both adapters, seed 1 turns red -> green under both."""
    import pandas as pd

    eval_dir = tmp_path / "demo" / "eval"
    eval_dir.mkdir(parents=True)
    rows = [
        ("base", 0, "red"),
        ("base", 1, "red"),
        ("cat_s0", 0, "red"),
        ("cat_s0", 1, "green"),
        ("cat_s1", 0, "red"),
        ("cat_s1", 1, "green"),
    ]
    trigger = [
        {"method": m, "kind": "trigger", "seed": s, "oracle_colour": "blue", "identity_ok": ok}
        for m, s, ok in [("cat_s0", 0, 1.0), ("cat_s0", 1, 0.0), ("cat_s1", 0, 1.0), ("cat_s1", 1, 1.0)]
    ]
    pd.DataFrame([{"method": m, "kind": "class", "seed": s, "oracle_colour": c} for m, s, c in rows] + trigger).to_csv(
        eval_dir / "per_image.csv", index=False
    )
    pd.DataFrame(
        [
            {
                "method": m,
                "identity_acc_mean": 1.0,
                "collapse_rate_mean": 0.0,
                "paired_preservation_mean": 0.5,
                "colour_distance_mean": 0.5,
            }
            for m in ("cat_s0", "cat_s1")
        ]
    ).to_csv(eval_dir / "summary.csv", index=False)
    res = run_per_seed(tmp_path / "demo")
    assert re.search(r"red -> green\s+2\b", res.stdout), res.stdout
    assert "red -> red" not in res.stdout and "blue" not in res.stdout
    assert "0: 1.000 / 0.000 / 0.500 / 0.500" in res.stdout
    res = run_per_seed(tmp_path / "demo", "--trigger-seeds", "1")
    assert "cat 0.75 -> 1.00" in res.stdout, res.stdout  # seeds 0-1: (0.5 + 1) / 2; seed 0 only: 1
    other = tmp_path / "demo" / "eval_g3"  # another evaluation of the same adapters, with fidelity scored
    other.mkdir()
    (other / "per_image.csv").write_text((eval_dir / "per_image.csv").read_text())
    pd.read_csv(eval_dir / "summary.csv").assign(fidelity_mean=[0.25, 0.75]).to_csv(other / "summary.csv", index=False)
    res = run_per_seed(tmp_path / "demo", "--eval", "eval_g3")
    assert "/ fidelity)" in res.stdout and "1: 1.000 / 0.000 / 0.500 / 0.500 / 0.750" in res.stdout, res.stdout


def test_reheading_carries_every_weight_and_changes_only_the_heads():
    """benchmarks/toyworld_rehead.py: v2.1's layout (attention_head_dim=32, read by diffusers as 32 heads) becomes
    32 channels per head with the same tensors, and a different function until it is fine-tuned."""
    import torch
    from diffusers import UNet2DConditionModel

    from catlab.toyworld.build import build_unet

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from toyworld_grow_attention import max_output_gap
        from toyworld_rehead import reheaded
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    narrow = UNet2DConditionModel.from_config({**build_unet().config, "attention_head_dim": 32})
    wide = reheaded(narrow)
    assert list(wide.config.attention_head_dim) == [1, 2, 4]
    assert {m.heads for name, m in narrow.named_modules() if name.endswith("attn1")} == {32}
    assert {m.heads for name, m in wide.named_modules() if name.endswith("attn1")} == {2, 4}
    a, b = narrow.state_dict(), wide.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max_output_gap(narrow, narrow)[0] == 0.0
    assert max_output_gap(wide, narrow)[0] > 1e-4  # the heads change what the same weights compute


def test_headline_checks_the_faithful_cat_bars_on_every_held_out_prompt(monkeypatch):
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from headline import check_faithful

    table = pd.DataFrame(
        {
            "method": ["LoRA", "CAT"],
            "identity_acc": [1.0, 0.95],
            "fidelity": [0.8, 0.5],
            "collapse_rate": [1.0, 0.0],
            "paired_preservation": [0.2, 0.85],
            "colour_distance": [0.7, 0.05],
        }
    ).set_index("method")
    per_prompt = pd.DataFrame(
        {
            "method": ["cat", "cat", "cat", "lora"],
            "kind": ["class", "held_out", "held_out", "held_out"],
            "prompt": ["a circle", "a square", "a star", "a square"],
            "paired_preservation": [0.85, 0.9, 0.4, 0.3],
        }
    )
    claims = dict(check_faithful(table, per_prompt))
    assert [ok for text, ok in claims.items() if text.startswith("CAT identity")] == [True]
    assert [ok for text, ok in claims.items() if text.startswith("CAT fidelity")] == [False]  # 0.5 < 0.9 x 0.8
    held = {text: ok for text, ok in claims.items() if "on '" in text}
    assert held == {
        "CAT paired preservation on 'a square' 0.90 >= 0.80 (lora 0.30)": True,
        "CAT paired preservation on 'a star' 0.40 >= 0.80 ()": False,
    }


def test_headline_keeps_other_concepts_demos_and_asks_before_replacing_its_own(tmp_path, monkeypatch, capsys):
    """Two concepts' demos under one --out: rerunning one must neither delete the other nor replace itself unasked."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import headline

    for concept in ("bronze_star", "circle_on_navy"):
        (tmp_path / concept).mkdir()
        (tmp_path / concept / "recipe.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["headline.py", "--concepts", "circle_on_navy", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        headline.main()
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "bronze_star" / "recipe.json").exists() and (
        tmp_path / "circle_on_navy" / "recipe.json"
    ).exists()
