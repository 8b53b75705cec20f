"""The notebooks are committed clean and share one layout: a single `parameters` cell (the first code cell, so
papermill and nbval use the CPU-tiny values), then a Colab-only install cell before anything imports catlab, then a
set-up through `catlab.widgets.setup_notebook`.

Running them is the browser tests' job (tests/test_browser.py), or nbval's headless (`pytest notebooks`); these
checks only read the JSON, so they take no time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB_GUARD = re.compile(r"""^if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""", re.MULTILINE)
IMPORTS_CATLAB = re.compile(r"^\s*(from\s+catlab[\s.]|import\s+catlab\b)", re.MULTILINE)


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code(path: Path) -> list[dict]:
    return [c for c in _cells(path) if c["cell_type"] == "code"]


def test_every_notebook_is_documented_and_every_documented_notebook_exists():
    """docs/notebooks.md and the README list exactly the notebooks in notebooks/ (and there are some)."""
    on_disk = {p.name for p in NOTEBOOKS}
    assert len(on_disk) >= 5, f"expected the five workbench notebooks, found {sorted(on_disk)}"
    for doc in ("docs/notebooks.md", "README.md"):
        listed = set(re.findall(r"\b(\d\d_[a-z_]+\.ipynb)\b", (ROOT / doc).read_text(encoding="utf-8")))
        assert listed == on_disk, f"{doc} lists {sorted(listed)}, notebooks/ holds {sorted(on_disk)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path):
    dirty = [
        i
        for i, c in enumerate(_cells(path))
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing, e.g. "
        f"`jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_first(path: Path):
    cells = _cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, (
        f"{path.name}: {len(tagged)} cells tagged 'parameters' (at {tagged}); exactly one is needed"
    )
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    assert tagged[0] == first_code, (
        f"{path.name}: the 'parameters' cell (cell {tagged[0]}) must be the first code cell ({first_code})"
    )
    src = _source(cells[first_code])
    assert re.search(r"""^world\s*=\s*["']toy["']""", src, re.MULTILINE), (
        f'{path.name}: the parameters cell must default to world = "toy"'
    )
    assert "CATLAB_PIP_SPEC" in src, (
        f"{path.name}: the parameters cell must define CATLAB_PIP_SPEC (what the Colab cell installs)"
    )
    assert not IMPORTS_CATLAB.search(src), (
        f"{path.name}: the parameters cell must hold plain values only, not import catlab"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_guarded_colab_install_before_catlab_import(path: Path):
    code = _code(path)
    guarded = [i for i, c in enumerate(code) if COLAB_GUARD.search(_source(c))]
    assert guarded, (
        f'{path.name}: no Colab install cell (`if "google.colab" in sys.modules:` followed by an indented pip install)'
    )
    src = _source(code[guarded[0]])
    lines = src.splitlines()
    start = next(i for i, line in enumerate(lines) if COLAB_GUARD.match(line))
    pip_lines = [(i, line) for i, line in enumerate(lines) if "pip" in line and not line.lstrip().startswith("#")]
    assert pip_lines, f"{path.name}: the Colab cell installs nothing"
    outside = [line for i, line in pip_lines if i <= start or not line[:1].isspace()]
    assert not outside, (
        f'{path.name}: pip calls {outside} must sit inside the `if "google.colab" in sys.modules:` block, '
        "so that they never run elsewhere"
    )
    assert "CATLAB_PIP_SPEC" in src, (
        f"{path.name}: the Colab cell should install CATLAB_PIP_SPEC, not a hard-coded address"
    )
    first_import = next((i for i, c in enumerate(code) if IMPORTS_CATLAB.search(_source(c))), None)
    assert first_import is None or guarded[0] < first_import, (
        f"{path.name}: the Colab install cell must come before catlab is imported"
    )


def test_docs_list_every_notebook():
    doc = (ROOT / "docs" / "notebooks.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in doc]
    assert not missing, f"docs/notebooks.md does not list {missing}; add a row with its Colab badge"


PRESET_OVERRIDE = re.compile(
    r"^[ \t]*[\w, ]+=[^#\n]*\bpreset\.(steps|rank|learning_rate|batch_size|sample_steps|seeds)\b", re.MULTILINE
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_set_up_by_the_package_helper(path: Path):
    """One set-up helper for every notebook, run configs from the package's presets, and no parameter silently replaced
    by a preset value (`steps = preset.steps`): `setup_notebook` fills only the parameters left at None."""
    code = "\n".join(_source(c) for c in _code(path))
    assert "setup_notebook(" in code, f"{path.name}: set the notebook up with catlab.widgets.setup_notebook"
    assert "TrainConfig(" not in code, (
        f"{path.name}: builds a TrainConfig by hand; use make_train_config(wb, ...), which fills the "
        "world's preset and lets the given fields win"
    )
    overrides = [m.group(0).strip() for m in PRESET_OVERRIDE.finditer(code)]
    assert not overrides, (
        f"{path.name}: {overrides} replace parameters by the preset; pass them to setup_notebook (None = the preset's)"
    )


def _repository() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_colab_install_follows_the_repository_in_pyproject(path: Path):
    """Colab installs catlab from the repository pyproject.toml names, keeping Colab's own torch and ipywidgets, and
    a failed install is one line saying what to set."""
    params, install = (_source(c) for c in _code(path)[:2])
    spec = re.search(r'^CATLAB_PIP_SPEC = "([^"]+)"', params, re.M)
    assert spec and spec.group(1) == f"catlab @ git+{_repository()}", (
        f"{path.name}: CATLAB_PIP_SPEC must install {_repository()}"
    )
    assert '("torch", "ipywidgets")' in install and '"-c"' in install, (
        f"{path.name}: the install must pin Colab's torch and ipywidgets"
    )
    assert "raise SystemExit(" in install and "set CATLAB_PIP_SPEC" in install, (
        f"{path.name}: a failed install must say what to set"
    )


def test_colab_badges_open_the_repository_in_pyproject():
    repo = _repository().removeprefix("https://github.com/")
    for doc in ("README.md", "docs/notebooks.md"):
        badges = re.findall(
            r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/notebooks/(\S+?\.ipynb)",
            (ROOT / doc).read_text(),
        )
        assert all(r == repo for r, _ in badges), f"{doc}: a Colab badge opens another repository than {repo}"
        if doc == "docs/notebooks.md":
            assert sorted(n for _, n in badges) == [p.name for p in NOTEBOOKS], "every notebook has its badge"
