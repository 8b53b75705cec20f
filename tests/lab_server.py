"""A throw-away JupyterLab server for the browser tests (tests/test_browser.py), and the Chromium that drives it.

`JupyterLabServer` starts `jupyter lab` on 127.0.0.1 (a free port, a random token, no browser) with its root in a
temporary folder that holds copies of the notebooks (`copy_notebooks`), and with its own settings, workspaces, runtime
and IPython folders, so that nothing in the repository (or the user's ~/.jupyter) is read or written. Every wait is
bounded and every failure says what the server printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Settings for a clean, quiet JupyterLab: no news or update pop-ups, and every cell kept in the DOM
# (windowing "none"), so that output areas of cells outside the viewport can be inspected too.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLabServer:
    """`jupyter lab` serving `root` (a folder it may write into) on 127.0.0.1; use as a context manager."""

    def __init__(self, root: Path, home: Path, start_timeout: float = 90.0):
        self.root, self.home, self.start_timeout = Path(root), Path(home), start_timeout
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def __enter__(self) -> JupyterLabServer:
        settings = self.home / "lab-settings"
        for rel, value in LAB_SETTINGS.items():
            p = settings / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            IPYTHONDIR=str(self.home / "ipython"),
            JUPYTER_PLATFORM_DIRS="1",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.allow_root=True",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"jupyter lab exited with code {self.proc.returncode} before it answered; its log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"jupyter lab did not answer on {self.url} within {self.start_timeout:.0f} s; its log:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel (each notebook's kernel holds a model in memory)."""
        try:
            for k in self.api("GET", "/api/kernels"):
                self.api("DELETE", f"/api/kernels/{k['id']}")
        except (urllib.error.URLError, OSError):
            pass

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close() if hasattr(self, "_log") else None


def copy_notebooks(src: Path, dst: Path) -> list[Path]:
    """Copies of the notebooks in `src` (outputs cleared, in case any were left) in `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for nb in sorted(src.glob("*.ipynb")):
        data = json.loads(nb.read_text(encoding="utf-8"))
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (dst / nb.name).write_text(json.dumps(data, indent=1), encoding="utf-8")
        out.append(dst / nb.name)
    return out


def find_chromium() -> str | None:
    """The Chromium to drive: $CATLAB_CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    for candidate in (
        os.environ.get("CATLAB_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None
