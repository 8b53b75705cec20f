"""benchmarks/unconditional_source.py: a folder of its own (--new), its variants trained and scored, and the
faithful-CAT bars it prints for each plain-LoRA/CAT pair, by the oracle or, for a held-out concept, by the pixels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_unconditional_source_trains_a_variant_and_scores_both_branches(toyworld_env, tmp_path):
    from catlab.demo.experiment import run_demo

    demo = tmp_path / "demo"
    run_demo(out=demo, quick=True, workers=1)
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "unconditional_source.py"),
            str(demo),
            "--variant",
            "cat_null_share=0,cat_guidance=3",
            "--variant",
            "regime=lora,trigger_embedding_lr=0.01",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (demo / "runs" / "v_null_share0p0_guidance3p0_seed0" / "adapter").is_dir(), (
        "the variant is trained with the demo's recipe"
    )
    pivotal = demo / "runs" / "v_regimelora_trigger_embedding_lr0p01_seed0"
    assert (pivotal / "adapter" / "trigger_embeddings.safetensors").is_file(), "pivotal tuning's vectors saved"
    assert "regime: lora" in (pivotal / "config.yaml").read_text(), "a variant may train another method"
    out = res.stdout
    assert "unconditional branch: adapted" in out and "unconditional branch: base" in out, out[-2000:]
    for setting in ("lora", "dreambooth", "cat", "v_null_share0p0_guidance3p0"):
        assert re.search(rf"^{setting}\s+\d\.\d\d ± ", out, re.M), f"{setting} missing from:\n{out[-2000:]}"
    assert "base / adapted" in out
    at_two = subprocess.run(  # the same adapters sampled at another guidance scale, into a folder of their own
        [sys.executable, str(ROOT / "benchmarks" / "unconditional_source.py"), str(demo), "--sources", "adapted"]
        + ["--guidance", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert at_two.returncode == 0, at_two.stderr[-3000:]
    assert "guidance 2;" in at_two.stdout and re.search(r"^cat\s+\d\.\d\d ± ", at_two.stdout, re.M), at_two.stdout
    assert (demo / "eval_unconditional_adapted_g2" / "per_image.csv").is_file()
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "unconditional_source.py"), str(demo), "--variant", "lambda=2"],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )


def test_a_new_variants_folder_holds_the_demos_recipe_and_the_concept(tmp_path, monkeypatch):
    """`unconditional_source.py DIR --new CONCEPT --first-seed N`: what the script then reads is what a demo writes."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from unconditional_source import _recipe_seeds, _recipe_train, start_folder

    from catlab.config import recipe_overrides

    folder = tmp_path / "huge_s3"
    written = start_folder(folder, "huge_circle", first_seed=3, n_seeds=2)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe == written and (recipe["concept"], recipe["first_seed"], recipe["n_seeds"]) == ("huge_circle", 3, 2)
    assert _recipe_train(recipe) == recipe_overrides("demo"), "the demo's recipe, every field"
    assert _recipe_seeds(recipe) == (48, 24), "and the demo's sampling seeds"
    photos = sorted(p.name for p in (folder / "concept").glob("*.png"))
    assert photos and all((folder / "concept" / p.replace(".png", ".txt")).is_file() for p in photos)
    with pytest.raises(SystemExit, match="already holds files"):
        start_folder(folder, "huge_circle", first_seed=0, n_seeds=3)
    with pytest.raises(SystemExit, match="unknown toy concept 'hexagon'"):
        start_folder(tmp_path / "other", "hexagon", first_seed=0, n_seeds=3)
    start_folder(tmp_path / "corner", "corner_square", first_seed=0, n_seeds=3)  # held out from the oracle
    held_out = json.loads((tmp_path / "corner" / "concept" / "concept.json").read_text())
    assert (held_out["trigger"], held_out["class_word"], held_out["centre"]) == ("tok", "square", [0.3, 0.3])


def test_claim_pairs_match_a_plain_lora_variant_with_the_same_change_for_cat(monkeypatch):
    """`--variant regime=lora,X --variant X` prints the faithful-CAT bars for that pair; the bars read the means."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from unconditional_source import claim_pairs, pair_claims, parse_variant

    variants = [parse_variant(v) for v in ("regime=lora,rank=8", "rank=8", "rank=16", "cat_lambda=2")]
    pairs = claim_pairs(variants, ["lora", "dreambooth", "cat"])
    assert pairs == [("the demo's recipe", "lora", "cat"), ("rank=8", "v_regimelora_rank8", "v_rank8")]
    assert claim_pairs(variants[2:], ["lora"]) == [], "no pair without both halves"
    bare = [parse_variant(v) for v in ("regime=lora", "regime=cat")]
    assert claim_pairs(bare, []) == [("the folder's recipe, as variants", "v_regimelora", "v_regimecat")]
    cat_only = [parse_variant(v) for v in ("regime=lora,rank=8", "rank=8,cat_lambda=8", "rank=16,cat_lambda=8")]
    assert claim_pairs(cat_only, []) == [
        ("rank=8 (CAT also cat_lambda=8.0)", "v_regimelora_rank8", "v_rank8_lambda8p0")
    ], "λ changes CAT alone: plain LoRA's run with the same rank is its pair; another rank is not"
    mean = pd.DataFrame(
        {"identity": [1.0, 0.95, 0.5], "fidelity": [0.9, 0.85, 0.9], "collapse": [1.0, 0.02, 0.0],
         "paired": [0.2, 0.85, 0.9], "colour dist.": [0.7, 0.05, 0.05]},
        index=["v_regimelora_rank8", "v_rank8", "v_rank16"],
    )  # fmt: skip
    verdicts = pair_claims(mean, "v_regimelora_rank8", "v_rank8")
    assert len(verdicts) == 6 and all(ok for _, ok in verdicts), verdicts
    failed = [text for text, ok in pair_claims(mean, "v_regimelora_rank8", "v_rank16") if not ok]
    assert len(failed) == 1 and failed[0].startswith("CAT identity 0.50 >= 0.9 x LoRA 1.00"), failed


def test_pair_claims_judge_a_concept_the_oracle_does_not_know_by_its_pixels(monkeypatch):
    """No identity (a held-out concept): fidelity stands for identity and fidelity's leak for collapse, and the
    verdicts say so; a leak of class samples fails the collapse bar as the oracle's collapse would."""
    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from unconditional_source import pair_claims

    nan = float("nan")
    mean = pd.DataFrame(
        {"identity": [nan, nan, nan], "fidelity": [0.9, 0.85, 0.6], "collapse": [nan, nan, nan],
         "leak (fid.)": [0.4, 0.01, 0.2], "paired": [0.2, 0.85, 0.9], "colour dist.": [0.7, 0.05, 0.05]},
        index=["lora", "cat", "cat_leaky"],
    )  # fmt: skip
    verdicts = pair_claims(mean, "lora", "cat")
    assert all(ok for _, ok in verdicts), verdicts
    assert verdicts[0][0].startswith("LoRA identity (fidelity: the oracle does not know this concept) 0.90 >= 0.70")
    assert any("collapse (fidelity's leak" in text and "0.01 <= 0.05" in text for text, _ in verdicts), verdicts
    failed = [text for text, ok in pair_claims(mean, "lora", "cat_leaky") if not ok]
    assert len(failed) == 3, failed  # identity and fidelity 0.6 < 0.9 x 0.9, and the leak 0.2
    assert any("leak" in text and "0.20 <= 0.05" in text for text in failed), failed
