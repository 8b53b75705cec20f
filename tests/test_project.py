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


@pytest.mark.slow
def test_a_hub_model_fails_offline_with_advice_instead_of_downloading(tmp_path):
    """Nothing is downloaded here or in CI: with the hub offline and an empty cache, asking for a hub model ends in a
    clear error at once (no retries, no partial download) that says what to do."""
    code = (
        "from catlab.models import load_base\n"
        "try:\n    load_base('stable-diffusion-v1-5/stable-diffusion-v1-5')\n"
        "except OSError as e:\n    print('ERROR', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("ERROR could not load base model 'stable-diffusion-v1-5/stable-diffusion-v1-5'"), out
    assert "offline" in out and "pass its folder" in out
    assert not list((tmp_path / "hf").rglob("*.safetensors")), "nothing may be downloaded"


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "catlab.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in SUBCOMMANDS:
        assert re.search(rf"^\s+{cmd}\s+\S", out, re.M), f"{cmd} missing from --help:\n{out}"


# what a user looks for in each subcommand's --help (the options the docs tell them to use)
HELP_MENTIONS = {
    "demo": ("--quick", "--concept", "--first-seed", "--overwrite"),
    "train": ("--config", "--set", "--resume"),
    "eval": ("--adapter", "--concept", "--dino", "--clip"),
    "sample": ("--adapter", "--scale", "--seeds"),
    "toyworld": ("pretrain", "concepts", "export-concept"),
}


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_each_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: catlab {cmd}"), out[:200]
    missing = [m for m in HELP_MENTIONS[cmd] if m not in out]
    assert not missing, f"catlab {cmd} --help does not mention {missing}:\n{out}"


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
    listed = capsys.readouterr().out
    assert "two_tone_circle" in listed and "corner_square" in listed and "held out" in listed
    assert main(["toyworld", "export-concept", "striped_square", "--out", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*.png"))) == 5
    capsys.readouterr()
    assert main(["toyworld", "export-concept", "striped_square", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("catlab: error:") and "overwrite" in err and "Traceback" not in err
    with pytest.raises(SystemExit, match="unknown toy concept 'nope'"):
        main(["toyworld", "export-concept", "nope", "--out", str(tmp_path / "d")])
    assert main(["toyworld", "export-concept", "corner_square", "--out", str(tmp_path / "held")]) == 0
    assert len(list((tmp_path / "held").glob("*.png"))) == 5


@pytest.mark.slow
def test_toyworld_pretrain_quick_keeps_work_files_out_of_the_asset_folder(tmp_path):
    assert main(["toyworld", "pretrain", "--quick", "--out", str(tmp_path / "assets")]) == 0
    assert (tmp_path / "assets" / "pipeline" / "model_index.json").is_file()
    assert not list((tmp_path / "assets").glob("*.ckpt")) and not (tmp_path / "assets" / "_work").exists()
    assert (tmp_path / "assets-work" / "unet.ckpt").is_file()


def test_import_contracts_hold():
    """The layering in pyproject.toml ([tool.importlinter]): one-way layers, the toy world beside the core."""
    tomllib = pytest.importorskip("tomllib")
    n = len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"import contracts broken:\n{res.stdout[-3000:]}"
    assert f"{n} kept, 0 broken" in res.stdout


def test_the_import_contracts_catch_a_wrong_way_import(tmp_path):
    """The contracts are not vacuous: a copy of the package whose pure metrics import the training loop fails them."""
    import shutil

    shutil.copytree(ROOT / "catlab", tmp_path / "catlab", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = tmp_path / "catlab" / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom catlab.training.loop import train  # noqa: E402,F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run(
        [str(lint)], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}
    )
    assert res.returncode != 0 and "catlab.evaluation.metrics -> catlab.training.loop" in res.stdout, res.stdout[-2000:]


def test_public_names_mean_one_thing_however_often_they_are_read():
    """`catlab.X` is the same object before and after every submodule is imported (a submodule named like an export
    would replace it: `catlab.train` was once the function, then the module), and `from catlab import X` agrees."""
    import importlib
    import pkgutil

    import catlab

    first = {name: getattr(catlab, name) for name in catlab.__all__}
    for mod in pkgutil.walk_packages(catlab.__path__, "catlab."):
        importlib.import_module(mod.name)
    for name, obj in first.items():
        assert getattr(catlab, name) is obj, f"catlab.{name} changed meaning after the submodules were imported"
        assert not isinstance(obj, type(catlab)), f"catlab.{name} is a module, not the function or class users expect"
        exec(f"from catlab import {name} as again", globals())
        assert globals()["again"] is obj
    assert callable(catlab.train) and catlab.train.__module__ == "catlab.training.loop"


def _functions(root: Path):
    import ast

    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs] + [x for x in (a.vararg, a.kwarg) if x is not None]
                n = len([p for p in params if p.arg not in ("self", "cls")])
                yield f"{path.relative_to(root.parent)}:{node.lineno} {node.name}", n, node.end_lineno - node.lineno + 1


def test_no_function_in_the_package_is_over_60_lines_or_10_parameters():
    """Small functions, each one job: a longer one gets named steps, a wider one a settings value."""
    big = [
        f"{where}: {lines} lines, {n} parameters"
        for where, n, lines in _functions(ROOT / "catlab")
        if lines > 60 or n > 10
    ]
    assert not big, "split these (named steps) or group their parameters (a dataclass):\n" + "\n".join(big)


def test_the_size_check_catches_a_wide_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def wide(a, b, c, d, e, f, g, h, i, j, k):\n    return a\n\nclass C:\n    def ok(self, x):\n        return x\n"
    )
    sizes = {where.split()[-1]: (n, lines) for where, n, lines in _functions(pkg)}
    assert sizes == {"wide": (11, 2), "ok": (1, 2)}


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["ruff-check", "ruff-format"])
def test_ruff_passes(check):
    """The linter is part of the test command; its settings are pyproject.toml's [tool.ruff]."""
    ruff = Path(sys.executable).with_name("ruff")
    res = subprocess.run(
        [str(ruff) if ruff.exists() else "ruff", *check, "."], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, (
        f"ruff {' '.join(check)} found problems (`ruff format .` and `ruff check --fix .` fix most):\n{res.stdout[-4000:]}"
    )
