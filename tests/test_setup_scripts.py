"""scripts/install_browser.sh, which `bootstrap.sh --tests` runs: on a machine without Chromium it gets one the way
the user's rights allow (apt as root or with sudo, else Playwright's download), or says in one line what to run.
Each case runs the real script with a PATH of stand-ins that record what they were asked to do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_browser.sh"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def _machine(
    tmp_path: Path,
    *,
    uid: int,
    sudo: bool = False,
    apt: bool = True,
    apt_works: bool = True,
    playwright_works: bool = False,
) -> tuple[Path, Path]:
    """A folder of stand-in commands and the log they append to; a working install leaves a `chromium` on PATH."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("cat", "env"):  # what the stand-ins themselves use
        os.symlink(f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else f"/bin/{tool}", bin_dir / tool)
    _stub(bin_dir, "id", f"echo {uid}")
    install_chromium = f'printf "#!/bin/bash\\n" > {bin_dir}/chromium; /bin/chmod +x {bin_dir}/chromium'
    if apt:
        _stub(
            bin_dir,
            "apt-get",
            f'echo "apt-get $*" >> {log}\n'
            + (f'[ "$1" = install ] && {{ {install_chromium}; }}; exit 0' if apt_works else "exit 100"),
        )
    if sudo:
        _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}\n[ "$1" = -n ] && shift\n[ "$1" = true ] && exit 0\n"$@"')
    playwright = f"{install_chromium}; exit 0" if playwright_works else "exit 1"
    _stub(
        bin_dir,
        "py",
        f'if [ "$1" = - ]; then /bin/cat >/dev/null; exit 1; fi\necho "py $*" >> {log}\n'
        f'[ "$*" = "-m playwright install chromium" ] && {{ {playwright}; }}\nexit 1',
    )
    return bin_dir, log


def _run(bin_dir: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": str(bin_dir),
        "HOME": str(bin_dir.parent),
        "CATLAB_SYSTEM_CHROMIUM": str(bin_dir / "no-such-chromium"),
    }
    return subprocess.run(["/bin/bash", str(SCRIPT), "py"], capture_output=True, text=True, env=env, timeout=60)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_root_installs_debians_chromium(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=0)
    res = _run(bin_dir)
    assert res.returncode == 0, res.stderr
    assert _calls(log) == ["apt-get update -qq", "apt-get install -y -qq chromium"]
    assert (bin_dir / "chromium").exists()


def test_a_user_with_sudo_installs_through_sudo(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=1000, sudo=True)
    assert _run(bin_dir).returncode == 0
    calls = _calls(log)
    assert "sudo -n apt-get install -y -qq chromium" in calls and "apt-get install -y -qq chromium" in calls
    assert not any(c.startswith("py ") for c in calls), "no download when apt worked"


@pytest.mark.parametrize("apt", [False, True], ids=["no-apt", "apt-without-rights"])
def test_without_rights_playwright_downloads_its_own(tmp_path, apt):
    bin_dir, log = _machine(tmp_path, uid=1000, apt=apt, playwright_works=True)
    res = _run(bin_dir)
    assert res.returncode == 0, res.stderr
    assert _calls(log) == ["py -m playwright install chromium"]
    assert "no Chromium" not in res.stderr


def test_a_failed_apt_falls_back_to_playwright(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=0, apt_works=False, playwright_works=True)
    res = _run(bin_dir)
    assert _calls(log)[-1] == "py -m playwright install chromium" and (bin_dir / "chromium").exists()
    assert "trying Playwright's own browser" in res.stderr


def test_when_nothing_works_one_line_says_what_to_run(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=1000)
    res = _run(bin_dir)
    assert res.returncode == 0, "the set-up goes on: only the browser tests need Chromium"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "sudo apt-get install -y chromium" in lines[0] and "py -m playwright install chromium" in lines[0]
    assert "CATLAB_CHROMIUM" in lines[0]


def test_an_installed_chromium_is_left_alone(tmp_path):
    bin_dir, log = _machine(tmp_path, uid=0)
    _stub(bin_dir, "chromium", "exit 0")
    res = _run(bin_dir)
    assert res.returncode == 0 and _calls(log) == [] and res.stdout == "" and res.stderr == ""


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci_lines == ["bash scripts/bootstrap.sh --tests && .venv/bin/python -m pytest"], ci_lines
    assert ci_lines[0] in readme, "the README must show the command CI runs"


# ----------------------------------------------------------------------------- bootstrap.sh and the pinned versions


def _bootstrap(tmp_path: Path, **env: str) -> list[str]:
    """Run a copy of scripts/bootstrap.sh whose Pythons (.venv/bin/python and Colab's python3) are stand-ins that log
    their arguments and report torch installed but not catlab; returns what they were asked to do."""
    import shutil

    root, log, bin_dir = tmp_path / "repo", tmp_path / "python.log", tmp_path / "bin"
    for name in ("scripts/bootstrap.sh", "scripts/constraints.txt", "pyproject.toml"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    (root / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    python = f'echo "$(basename "$0") $*" >> {log}\nif [ "$1" = "-c" ] && [ "$2" != "import torch" ]; then exit 1; fi'
    _stub(root / ".venv" / "bin", "python", python)
    _stub(bin_dir, "python3", python)
    clean = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "CATLAB_NO_VENV", "CATLAB_UNPINNED")}
    subprocess.run(
        ["bash", str(root / "scripts" / "bootstrap.sh")],
        env={**clean, "PATH": f"{bin_dir}:{clean['PATH']}", **env},
        check=True,
        capture_output=True,
    )
    return [line for line in log.read_text().splitlines() if " -m pip install" in line]


def test_bootstrap_installs_the_pinned_versions_into_its_venv_and_leaves_colabs_alone(tmp_path):
    """The figures' library versions (scripts/constraints.txt) go into .venv; CATLAB_UNPINNED=1 takes the newest
    pyproject.toml allows, and Colab's own Python keeps its libraries."""
    assert _bootstrap(tmp_path / "venv") == ["python -m pip install -q -e .[dev] -c scripts/constraints.txt"]
    assert _bootstrap(tmp_path / "unpinned", CATLAB_UNPINNED="1") == ["python -m pip install -q -e .[dev]"]
    assert _bootstrap(tmp_path / "colab", COLAB_RELEASE_TAG="release-colab") == ["python3 -m pip install -q -e .[dev]"]


def test_the_pins_name_every_library_catlab_depends_on_but_torch():
    """Every runtime and dev dependency in pyproject.toml has one pinned version (torch is pinned by bootstrap.sh),
    for the Python the figures were measured with only."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, the Python the pins are for
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]
        for d in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]
    pins = {}
    for line in (ROOT / "scripts" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            spec, _, marker = line.partition(";")
            name, _, version = spec.strip().partition("==")
            assert version and marker.strip() == 'python_version == "3.11"', line
            pins[name.lower().replace("_", "-")] = version
    missing = [d for d in wanted if d != "torch" and d.lower() not in pins]
    assert not missing, f"not pinned in scripts/constraints.txt: {missing}"
    assert "torch" not in pins, "torch is pinned by bootstrap.sh (CATLAB_TORCH), not here"
