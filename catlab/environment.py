"""What a run ran on: catlab's commit, the libraries' versions and the processor.

Training is deterministic on one machine, but the digits need not survive a move to another: torch picks its CPU
kernels by instruction set (AVX2, AVX-512, ...) and a library update can change an operation, and a difference in
the last bit of one step grows, over 600 steps, into different samples. The demo records all of this beside its
numbers, so that a table that does not reproduce can be traced to the machine rather than the code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "numpy", "pillow")  # what sets the digits


def describe_environment() -> dict[str, str]:
    """catlab's version (and git commit, in a clone), Python's and each library's version, the processor's name, the
    CPU kernels torch uses, the core count and the GPU, as strings."""
    import torch

    from catlab import __version__

    env = {
        "catlab": __version__ + (f" ({commit})" if (commit := _git_commit()) else ""),
        "python": platform.python_version(),
    }
    env |= {lib: _version(lib) for lib in LIBRARIES}
    env["cpu"] = _cpu_name()
    env["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()  # e.g. AVX512, AVX2: what sets the CPU's rounding
    env["cores"] = str(os.cpu_count())
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return env


def environment_line(env: dict[str, str]) -> str:
    """One line for a report: 'catlab 0.2.0 (abc1234), torch 2.13.0+cpu, ...; AMD EPYC, AVX512 kernels, 2 cores'."""
    libs = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("cpu", "cpu_kernels", "cores", "gpu"))
    gpu = f", GPU {env['gpu']}" if env.get("gpu", "none") != "none" else ""
    return f"{libs}; {env.get('cpu')}, {env.get('cpu_kernels')} kernels, {env.get('cores')} cores{gpu}"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    """The short commit of catlab's checkout, with '+changes' when files differ from it; None outside a clone."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = _git(root, "rev-parse", "--short", "HEAD")
        if head.returncode:
            return None
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "catlab").stdout.strip()
        return head.stdout.strip() + ("+changes" if changed else "")
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)


def _cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
