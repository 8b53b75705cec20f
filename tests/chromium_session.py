"""Headless Chromium for the browser tests: start it (or fail the test saying what to install), log progress, and
fail with a picture of the page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab_server import find_chromium


def log(msg: str) -> None:
    """A progress line of the browser tests (shown with -s, kept in the captured output otherwise)."""
    print(f"[browser] {msg}", flush=True)


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright; a test failure (not a skip) when either is missing."""
    import pytest

    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(
            f"the browser tests need Playwright for Python ({e}); install the dev extras: "
            "`.venv/bin/python -m pip install -e '.[dev]'` (scripts/bootstrap.sh does)",
            pytrace=False,
        )
    pw = sync_playwright().start()
    exe = find_chromium() or _playwrights_own(pw)
    if exe is None:
        pw.stop()
        pytest.fail(
            "the browser tests need Chromium and found none at $CATLAB_CHROMIUM, /usr/bin/chromium, on PATH or in "
            "Playwright's cache; `bash scripts/bootstrap.sh --tests` installs one (or run `apt-get install -y chromium`, "
            "or `.venv/bin/python -m playwright install chromium`)",
            pytrace=False,
        )
    try:
        chromium, error = (
            pw.chromium.launch(executable_path=exe, headless=True, args=["--disable-gpu", "--disable-dev-shm-usage"]),
            None,
        )
    except PlaywrightError as e:
        chromium, error = None, e
    if chromium is None:
        pw.stop()
        lines = str(error).splitlines()
        launch_log = [line for line in lines if "pid=" in line and "launching" not in line][-6:]
        pytest.fail(
            f"Chromium ({exe}) did not start under Playwright: {lines[0]}\n" + "\n".join(launch_log), pytrace=False
        )
    log(f"Chromium {chromium.version} from {exe}")
    try:
        yield chromium
    finally:
        chromium.close()
        pw.stop()


def _playwrights_own(pw) -> str | None:
    """The Chromium that `playwright install chromium` downloaded, when there is one."""
    import os

    path = pw.chromium.executable_path
    return path if path and os.access(path, os.X_OK) else None


def fail_with_screenshot(error: AssertionError, page, path: Path, full_page: bool = False) -> None:
    """Fail the test with its message and, when the browser can still take it, a picture of the page at the failure."""
    import pytest

    try:
        page.screenshot(path=str(path), full_page=full_page)
        note = f"\n(the page at the failure: {path})"
    except Exception:
        note = ""
    pytest.fail(f"{error}{note}", pytrace=False)
