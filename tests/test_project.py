"""Project plumbing: the CLI, environment.yml in sync with pyproject, offline test settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catlab.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("demo", "train", "eval", "sample", "toyworld")


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].strip().lower() for r in reqs if not r.startswith("-")}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(meta["dependencies"]) | _names(meta["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _names(pip_section) == wanted


def test_tests_run_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "catlab.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in SUBCOMMANDS:
        assert re.search(rf"^\s+{cmd}\s+\S", out, re.M), f"{cmd} missing from --help:\n{out}"


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_each_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 100


def test_unknown_arguments_give_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["demo", "--frobnicate"])
    assert e.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["teleport"])
    assert "invalid choice: 'teleport'" in capsys.readouterr().err


def test_toyworld_concepts_and_export(tmp_path, capsys):
    assert main(["toyworld", "concepts"]) == 0
    assert "two_tone_circle" in capsys.readouterr().out
    assert main(["toyworld", "export-concept", "striped_square", "--out", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*.png"))) == 5
    capsys.readouterr()
    assert main(["toyworld", "export-concept", "striped_square", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("catlab: error:") and "overwrite" in err and "Traceback" not in err
    with pytest.raises(SystemExit, match="unknown concept"):
        main(["toyworld", "export-concept", "nope", "--out", str(tmp_path / "d")])


def test_toyworld_pretrain_quick_keeps_work_files_out_of_the_asset_folder(tmp_path):
    assert main(["toyworld", "pretrain", "--quick", "--out", str(tmp_path / "assets")]) == 0
    assert (tmp_path / "assets" / "pipeline" / "model_index.json").is_file()
    assert not list((tmp_path / "assets").glob("*.ckpt")) and not (tmp_path / "assets" / "_work").exists()
    assert (tmp_path / "assets-work" / "unet.ckpt").is_file()


def test_import_contracts_hold():
    """The layering in pyproject.toml ([tool.importlinter]): one-way layers, the toy world beside the core."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"import contracts broken:\n{res.stdout[-3000:]}"
    assert "2 kept, 0 broken" in res.stdout
