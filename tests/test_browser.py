"""The notebooks as people see them: each notebook opened in JupyterLab in headless Chromium, all cells run with the
CPU-tiny parameters, and the page checked: no cell ends in an error, every widget output is a live widget view (not
the "Loading widget..." placeholder nor a plain-text `VBox(children=...)`, which would mean JupyterLab's widget
manager does not work), widget text is not cut off, and the widgets that matter do something when used: the
**Train** button of 02_train trains with a live loss curve and sample grids, the adapter-scale slider of 03_diversity
redraws its grid, the 01_data_prep panel and caption boxes react. (The demo's HTML report has its own browser test,
tests/test_browser_report.py.)

JupyterLab serves copies of the notebooks from a temporary folder (tests/jupyterlab_browser.py), so nothing in the
repository gets outputs. Needs Playwright for Python (the dev extras) and a Chromium: Debian's `chromium` package
(`apt-get install chromium`, which .ci/run does) or $CATLAB_CHROMIUM; Playwright's own browser download is not
used. Without them the tests fail and say why (tests/chromium_session.py).

Screenshots of a widget panel and a result figure of each notebook go to a temporary folder, or, with
CATLAB_SCREENSHOTS=1, to docs/img/notebooks/ (the pictures in docs/notebooks.md and the README). With
CATLAB_BROWSER_PAGES=<folder>, every notebook is also saved there as screenshots, one viewport at a time.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from chromium_session import chromium_browser, fail_with_screenshot, log
from jupyterlab_browser import NotebookPage
from lab_server import JupyterLabServer, copy_notebooks

pytestmark = [pytest.mark.browser, pytest.mark.notebooks]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RUN_TIMEOUT = float(os.environ.get("CATLAB_BROWSER_TIMEOUT", "480"))  # seconds for Run All Cells of one notebook
CLICK_TIMEOUT = 300.0  # seconds for what one click starts (the Train button trains a whole adapter)
VIEWPORT = {"width": 1280, "height": 900}  # a laptop screen, JupyterLab's file browser open


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving copies of the notebooks from a temporary folder."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    copy_notebooks(ROOT / "notebooks", tmp / "root")
    t0 = time.monotonic()
    try:
        server = JupyterLabServer(tmp / "root", tmp / "home").__enter__()
    except RuntimeError as e:
        pytest.fail(f"JupyterLab did not start: {e}", pytrace=False)
    log(f"JupyterLab up on {server.url} in {time.monotonic() - t0:.1f} s")
    yield server
    server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: docs/img/notebooks/ with CATLAB_SCREENSHOTS=1, else a temporary folder."""
    if os.environ.get("CATLAB_SCREENSHOTS") == "1":
        return ROOT / "docs" / "img" / "notebooks"
    return tmp_path_factory.mktemp("screenshots")


# ----------------------------------------------------------------------------- helpers


def _image_png(locator) -> bytes:
    """The pixels of an image on the page, as a screenshot of the element (what a person sees)."""
    return locator.screenshot(animations="disabled", timeout=30_000)


def _same_picture(a: bytes, b: bytes) -> bool:
    from PIL import Image, ImageChops

    ia, ib = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    return ia.size == ib.size and ImageChops.difference(ia, ib).getbbox() is None


def _loaded(img) -> bool:
    """An <img> that holds a decoded picture (an ipywidgets.Image with a value)."""
    return img.count() > 0 and img.first.evaluate("e => e.complete && e.naturalWidth > 0")


# ----------------------------------------------------------------------------- what each notebook must show and do


def check_01_data_prep(nb: NotebookPage, shots: Path) -> None:
    panel = nb.outputs("source_panel = ParamPanel(").first
    editor = nb.outputs("editor = CaptionEditor(").first
    for what, loc in (("the 'Images' panel", panel), ("the caption editor", editor)):
        assert loc.locator(".jupyter-widgets").first.is_visible(), (
            f"01_data_prep: {what} is not visible" + nb.diagnosis()
        )
    nb.screenshot(editor, shots / "01_data_prep-panel.png")
    nb.screenshot(nb.outputs("image_strip([Image.open(p)").first, shots / "01_data_prep-figure.png")

    # the panel's button gathers the chosen images and says so in the panel
    panel.get_by_role("button", name="Use these images").click()
    nb.wait_for(
        lambda: "files in" in panel.locator(".widget-output").inner_text(),
        60,
        "01_data_prep: clicking 'Use these images' printed no 'N files in ...' in the panel",
    )
    # typing a new trigger rewrites it in every caption box
    boxes = editor.locator("input[type=text]")
    trigger_box = boxes.nth(0)
    assert trigger_box.input_value() == "sks", (
        f"01_data_prep: the trigger box shows {trigger_box.input_value()!r}, expected 'sks'"
    )
    trigger_box.fill("zwx")
    trigger_box.press("Enter")
    captions = lambda: [boxes.nth(i).input_value() for i in range(2, boxes.count())]  # noqa: E731 (0, 1: trigger, class word)
    nb.wait_for(
        lambda: captions() and all("zwx" in c and "sks" not in c for c in captions()),
        30,
        f"01_data_prep: typing a new trigger did not rewrite the captions (they read {captions()})",
    )


def check_02_train(nb: NotebookPage, shots: Path) -> None:
    panel = nb.outputs("panel = ParamPanel(").first
    monitor = nb.outputs("result = run_training(").first  # the monitor the run-all displayed
    assert "done" in monitor.inner_text(), (
        f"02_train: the monitor of Run All does not say 'done': {monitor.inner_text()[:200]!r}"
    )
    finals = nb.cell("result = run_training(").locator(".jp-RenderedImage img")
    assert finals.count() >= 2, (
        f"02_train: Run All shows {finals.count()} final figures after training, expected the loss curve and the grid"
    )

    # with fewer steps, clicking Train trains a new run into the panel: a status line, a live loss curve, then the
    # sample grid (the same settings as Run All would reuse its run; checked last)
    steps_box = panel.locator(".widget-inline-hbox", has=nb.page.locator("label", has_text="steps")).locator("input")
    steps_box.fill("20")
    steps_box.press("Enter")
    panel.get_by_role("button", name="Train", exact=True).click()
    out = panel.locator(".widget-output")
    status = out.locator(".widget-html").first
    loss_img, grid_img = out.locator("img.widget-image").nth(0), out.locator("img.widget-image").nth(1)
    seen_live = {"loss": False, "grid": False}
    t0 = time.monotonic()

    def done() -> bool:
        text = status.inner_text() if status.count() else ""
        running = "step" in text and "done" not in text
        if running and _loaded(loss_img):
            seen_live["loss"] = True
        if running and _loaded(grid_img):
            seen_live["grid"] = True
        if "Error" in out.inner_text() and "done" not in text:
            raise AssertionError(f"02_train: clicking Train failed: {out.inner_text()[:500]!r}")
        return "done" in text

    try:
        nb.wait_for(
            done,
            CLICK_TIMEOUT,
            "02_train: clicking Train did not finish training (the monitor never said 'done')",
            poll=0.2,
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\npanel output: {out.inner_text()[:800]!r}") from None
    log(
        f"02_train: Train button: trained in {time.monotonic() - t0:.1f} s; live loss curve seen: {seen_live['loss']}, "
        f"live grid seen: {seen_live['grid']}"
    )
    # then the live views make way for the final curve and grid as plain outputs (they stay in a saved notebook)
    finals = out.locator(".jp-RenderedImage img")
    nb.wait_for(
        lambda: finals.count() >= 2 and all(finals.nth(i).is_visible() for i in range(finals.count())),
        30,
        f"02_train: after training the panel shows {finals.count()} final figures, expected the loss curve and the grid",
    )
    assert seen_live["loss"], "02_train: the loss curve appeared only after training, not while it ran"
    assert seen_live["grid"], (
        "02_train: no sample grid appeared while training ran (validate_every should draw one mid-run)"
    )
    nb.screenshot(panel, shots / "02_train-panel.png")
    nb.screenshot(nb.outputs("method_grid(images, prompts, seeds)").first, shots / "02_train-figure.png")

    # the same settings again: the finished run is reused, and the panel says so and shows its curve and grid
    panel.get_by_role("button", name="Train", exact=True).click()
    nb.wait_for(
        lambda: "reused" in out.inner_text() and "done" in status.inner_text() and finals.count() >= 2,
        60,
        f"02_train: clicking Train with a finished run's settings did not show it reused: {out.inner_text()[:300]!r}",
    )


def check_03_diversity(nb: NotebookPage, shots: Path) -> None:
    view = nb.outputs("slider_view(render").first
    img, status, handle = (
        view.locator("img.widget-image"),
        view.locator(".widget-html").first,
        view.locator(".noUi-handle").first,
    )
    assert _loaded(img), "03_diversity: the adapter-scale view shows no grid" + nb.diagnosis()
    before, before_text = _image_png(img), status.inner_text()
    box = handle.bounding_box()
    assert box, "03_diversity: the adapter-scale slider has no handle on the page"
    # drag the handle right by a quarter of the track, as a person would
    track = view.locator(".noUi-target").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    nb.page.mouse.move(x, y)
    nb.page.mouse.down()
    nb.page.mouse.move(x + track["width"] * 0.25, y, steps=8)
    nb.page.mouse.up()
    t0 = time.monotonic()

    def redrawn() -> bool:
        text = status.inner_text()
        if "could not draw" in text:
            raise AssertionError(f"03_diversity: moving the slider failed: {text!r}")
        return text != before_text and "drawing" not in text

    nb.wait_for(
        redrawn,
        CLICK_TIMEOUT,
        f"03_diversity: moving the adapter-scale slider did not redraw (status still {before_text!r})",
    )
    after = _image_png(img)
    log(f"03_diversity: slider {before_text!r} -> {status.inner_text()!r}, redrawn in {time.monotonic() - t0:.1f} s")
    assert not _same_picture(before, after), (
        f"03_diversity: the grid is unchanged after moving the slider to {status.inner_text()!r}"
    )
    nb.screenshot(view, shots / "03_diversity-panel.png")
    nb.screenshot(nb.outputs("pca_scatter(embeddings").first, shots / "03_diversity-figure.png")


def check_04_ablations(nb: NotebookPage, shots: Path) -> None:
    nb.screenshot(
        nb.outputs("table = ablation_table(").last, shots / "04_ablations-panel.png"
    )  # the table, after a "wrote ..." line
    nb.screenshot(nb.outputs("tradeoff_figure(table").first, shots / "04_ablations-figure.png")


def check_05_multi_concept(nb: NotebookPage, shots: Path) -> None:
    nb.screenshot(nb.outputs("table = multi_concept_table(").first, shots / "05_multi_concept-panel.png")
    nb.screenshot(nb.outputs("display(multi_concept_figure(").first, shots / "05_multi_concept-figure.png")


CHECKS: dict[str, Callable[[NotebookPage, Path], None]] = {
    "01_data_prep": check_01_data_prep,
    "02_train": check_02_train,
    "03_diversity": check_03_diversity,
    "04_ablations": check_04_ablations,
    "05_multi_concept": check_05_multi_concept,
}


def test_every_notebook_has_browser_checks():
    missing = [p.stem for p in NOTEBOOKS if p.stem not in CHECKS]
    assert not missing, (
        f"tests/test_browser.py has no checks for {missing}: add a check_<name> function (screenshots at least)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_jupyterlab(path: Path, lab, browser, shots, tmp_path):
    name = path.stem
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    nb = NotebookPage(page, lab, path.name, log=log)
    t0 = time.monotonic()
    try:
        nb.open()
        state = nb.run_all(RUN_TIMEOUT)
        errors = nb.errors(state)
        assert not errors, "cells ended in an error:\n" + "\n".join(errors)
        if not nb.widgets_settled():
            nb.wait_for(nb.widgets_settled, 30, f"{name}: widgets still show 'Loading widget...'")
        state = nb.state()
        problems = nb.widget_problems(state)
        assert not problems, "widgets did not render:\n" + "\n".join(problems) + nb.diagnosis()
        clipped = nb.clipped_widgets()
        assert not clipped, f"{name}: widget text or panels do not fit:\n" + "\n".join(clipped)
        for wide in nb.wide_outputs():  # tables may scroll sideways; said, not failed
            log(f"{name}: wider than the notebook: {wide}")
        CHECKS[name](nb, shots)
        errors = nb.errors(nb.state())  # what the clicks printed into the panels
        assert not errors, "after using the widgets:\n" + "\n".join(errors)
        if os.environ.get("CATLAB_BROWSER_PAGES"):
            nb.scroll_pages(Path(os.environ["CATLAB_BROWSER_PAGES"]))
        log(f"{name}: passed in {time.monotonic() - t0:.1f} s")
    except AssertionError as e:
        fail_with_screenshot(e, page, tmp_path / f"{name}-failure.png")
    finally:
        context.close()
        lab.shutdown_kernels()
