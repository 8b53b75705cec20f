"""JupyterLab in a real browser, for tests/test_browser.py: a Playwright page driving one notebook on the server of
tests/lab_server.py.

`NotebookPage` opens a notebook there, runs all cells and reads back what a person sees: prompts, error outputs,
widget views, images.

Every wait is bounded and every failure says what was on the page; nothing is skipped silently.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_server import JupyterLabServer

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# what a widget looks like when JupyterLab has no working widget manager: its Python repr as plain text
WIDGET_REPR_PREFIXES = (
    "VBox(",
    "HBox(",
    "Box(",
    "GridBox(",
    "Output(",
    "Button(",
    "FloatSlider(",
    "IntSlider(",
    "Image(",
    "HTML(",
    "Dropdown(",
    "Text(",
    "FileUpload(",
    "FloatProgress(",
    "IntProgress(",
    "Tab(",
    "Accordion(",
)
WIDGET_FAILURE_TEXTS = ("Loading widget...", "Error displaying widget", "model not found", "Failed to load model class")

# ----------------------------------------------------------------------------- reading a notebook in the page

# JavaScript run in the page. `window.jupyterapp` is there because the server runs with expose_app_in_browser.
JS_PANEL = (
    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; "
    "return w && w.content && w.content.widgets ? w : null; }"
)

JS_STATE = """(path) => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  if (!panel || !panel.context || panel.context.path !== path || !panel.content.widgets) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.map((cell, index) => {
    const model = cell.model;
    const c = {index, type: model.type, source: model.sharedModel.getSource()};
    if (model.type !== 'code') return c;
    const prompt = cell.node.querySelector('.jp-InputArea-prompt');
    c.prompt = prompt ? prompt.textContent.trim() : '';
    c.count = model.executionCount;
    c.outputs = [];
    for (let i = 0; i < model.outputs.length; i++) {
      const o = model.outputs.get(i).toJSON();
      const data = o.data || {};
      c.outputs.push({type: o.output_type, mimes: Object.keys(data), ename: o.ename || null, evalue: o.evalue || null,
                      text: o.output_type === 'stream' ? String(o.text).slice(0, 2000)
                            : (data['text/plain'] ? String(data['text/plain']).slice(0, 300) : null)});
    }
    const read = n => ({mime: n.getAttribute('data-mime-type'), text: n.innerText.slice(0, 300),
                        widgets: n.querySelectorAll('.jupyter-widgets').length, height: n.getBoundingClientRect().height});
    const top = [...cell.node.querySelectorAll('.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output')];
    c.rendered = top.map(read);
    // outputs inside widgets (an Output widget, e.g. what a button printed)
    c.nested = [...cell.node.querySelectorAll('.jupyter-widgets .jp-OutputArea-output')].map(read);
    return c;
  });
  return {kernel: kernel ? kernel.status : 'none', dirty: panel.context.model.dirty, cells};
}"""


def cell_label(name: str, cell: dict) -> str:
    first = next((line for line in cell["source"].splitlines() if line.strip()), "(empty)")
    return f"{name}, cell {cell['index']} ({first.strip()[:80]!r})"


class NotebookPage:
    """One notebook open in JupyterLab in a Playwright page."""

    def __init__(self, page: Any, server: JupyterLabServer, path: str, log: Callable[[str], None] = print):
        self.page, self.server, self.path, self.log = page, server, path, log
        self.name = Path(path).stem
        self.console: list[str] = []
        page.on(
            "console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
        )
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))

    # -- opening and running

    def open(self, timeout: float = 120.0) -> None:
        """Open the notebook in its own workspace and wait until its kernel is idle."""
        url = f"{self.server.url}/lab/workspaces/{self.name}/tree/{self.path}?reset&token={self.server.token}"
        self.page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        self.wait_for(
            lambda: (s := self.state()) is not None and s["kernel"] == "idle",
            timeout,
            f"{self.name}: JupyterLab did not show the notebook with an idle kernel",
        )

    def state(self) -> dict | None:
        return self.page.evaluate(JS_STATE, self.path)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as e:  # the page may be mid-navigation; keep trying until the deadline
                last_error = e
            self.page.wait_for_timeout(poll * 1000)
        raise AssertionError(
            f"{what} within {timeout:.0f} s" + (f" (last error: {last_error})" if last_error else "") + self.diagnosis()
        )

    def diagnosis(self) -> str:
        """What the page showed: the kernel's state, the cells' prompts, browser console errors, the server log."""
        parts = []
        try:
            s = self.state()
            if s:
                prompts = " ".join(f"{c['index']}:{c['prompt']}" for c in s["cells"] if c["type"] == "code")
                parts.append(f"kernel {s['kernel']}; prompts {prompts}")
        except Exception as e:
            parts.append(f"(page not readable: {e})")
        if self.console:
            parts.append("browser console:\n  " + "\n  ".join(self.console[-15:]))
        parts.append("server log (tail):\n" + self.server.log_tail(15))
        return "\n" + "\n".join(parts)

    def run_all(self, timeout: float) -> dict:
        """Run all cells (Run ▸ Run All Cells) and wait until every code cell ran or one failed and the kernel is idle."""
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        t0 = time.monotonic()

        def finished() -> dict | None:
            s = self.state()
            if s is None or s["kernel"] not in ("idle",):
                return None
            code = [c for c in s["cells"] if c["type"] == "code"]
            if any("*" in c["prompt"] for c in code):
                return None
            failed = any(o["type"] == "error" for c in code for o in c["outputs"])
            if failed or all(c["count"] is not None for c in code):
                return s
            return None

        state = self.wait_for(finished, timeout, f"{self.name}: Run All Cells did not finish")
        self.log(f"{self.name}: all cells ran in {time.monotonic() - t0:.1f} s")
        return state

    # -- what a person sees

    def cell_index(self, marker: str, state: dict | None = None) -> int:
        """Index of the first cell whose source contains `marker`."""
        state = state or self.state()
        for c in state["cells"]:
            if marker in c["source"]:
                return c["index"]
        raise AssertionError(
            f"{self.name}: no cell contains {marker!r}; has the notebook changed? (update tests/test_browser.py)"
        )

    def cell(self, marker: str) -> Any:
        """The cell (a Playwright locator) whose source contains `marker`."""
        return self.page.locator(
            f".jp-NotebookPanel .jp-Notebook .jp-Cell[data-windowed-list-index='{self.cell_index(marker)}']"
        )

    def outputs(self, marker: str) -> Any:
        """The top-level outputs of that cell (one locator matching each)."""
        return self.cell(marker).locator(".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output")

    def errors(self, state: dict) -> list[str]:
        """One line per cell that ended in an error: notebook, cell index and first line, the exception."""
        out = []
        for c in state["cells"]:
            if c["type"] != "code":
                continue
            for o in c["outputs"]:
                if o["type"] == "error":
                    out.append(f"{cell_label(self.name, c)} raised {o['ename']}: {o['evalue']}")
            shown = [r for r in c["rendered"] + c["nested"] if r["mime"] == "application/vnd.jupyter.error"]
            if shown and not any(o["type"] == "error" for o in c["outputs"]):
                out.append(f"{cell_label(self.name, c)} shows an error: {shown[0]['text'][:300]}")
        return out

    def widget_problems(self, state: dict) -> list[str]:
        """Widget outputs that did not become live widget views: a plain-text repr (no widget manager), the
        "Loading widget..." placeholder or an error message in its place, or fewer views than widget outputs."""
        out = []
        for c in state["cells"]:
            if c["type"] != "code":
                continue
            n_models = sum(WIDGET_MIME in o["mimes"] for o in c["outputs"])
            for r in c["rendered"]:
                text = (r["text"] or "").strip()
                if r["mime"] == "text/plain" and text.startswith(WIDGET_REPR_PREFIXES):
                    out.append(
                        f"{cell_label(self.name, c)}: a widget is shown as its text repr {text[:60]!r}, so JupyterLab has "
                        "no working widget manager (jupyterlab_widgets missing, or not matching ipywidgets)"
                    )
                elif any(f in text for f in WIDGET_FAILURE_TEXTS) and not r["widgets"]:
                    out.append(f"{cell_label(self.name, c)}: a widget output shows {text[:80]!r} instead of the widget")
            n_views = sum(1 for r in c["rendered"] if r["mime"] is None and r["widgets"])
            if n_views < n_models:
                out.append(
                    f"{cell_label(self.name, c)}: {n_models} widget output(s) but {n_views} widget view(s) on the page "
                    f"(outputs shown as {[r['mime'] or 'widget' for r in c['rendered']]})"
                )
        return out

    def widgets_settled(self) -> bool:
        """No "Loading widget..." placeholder left on the page."""
        return not self.page.evaluate(
            "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
            ".some(n => n.innerText.includes('Loading widget...'))"
        )

    def clipped_widgets(self) -> list[str]:
        """Widget controls whose text does not fit (an ellipsis or a cut label), and widget panels wider than the
        output area (a horizontal scroll bar): each as 'class: text (needs N px, has M px)'."""
        return self.page.evaluate("""() => {
          const out = [];
          const controls = '.jp-OutputArea-output .jupyter-widgets.jupyter-button, .jp-OutputArea-output .widget-label, '
                           + '.jp-OutputArea-output .widget-readout, .jp-OutputArea-output .widget-dropdown select';
          for (const e of document.querySelectorAll(controls)) {
            if (e.offsetParent === null) continue;  // not displayed
            if (e.scrollWidth > e.clientWidth + 1)
              out.push(`${e.className}: ${JSON.stringify(e.innerText || e.value)} (needs ${e.scrollWidth} px, has ${e.clientWidth} px)`);
          }
          for (const e of document.querySelectorAll('.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output')) {
            if (!e.querySelector('.jupyter-widgets')) continue;
            if (e.scrollWidth > e.clientWidth + 1)
              out.push(`a widget output is wider than its area: ${JSON.stringify(e.innerText.slice(0, 60))}` +
                       ` (needs ${e.scrollWidth} px, has ${e.clientWidth} px)`);
          }
          return out;
        }""")

    def wide_outputs(self) -> list[str]:
        """Outputs wider than the notebook (a horizontal scroll bar, e.g. a wide table): 'cell N: text (needs N px, has M px)'."""
        return self.page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].flatMap(cell =>
          [...cell.querySelectorAll('.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output')]
            .map((e, i) => [e, i]).filter(([e, i]) => e.scrollWidth > e.clientWidth + 1)
            .map(([e, i]) => `cell ${cell.dataset.windowedListIndex}, output ${i}: ${JSON.stringify(e.innerText.slice(0, 50))}` +
                             ` (needs ${e.scrollWidth} px, has ${e.clientWidth} px)`))""")

    def scroll_pages(self, folder: Path, step: int = 800) -> None:
        """Screenshots of the whole notebook, one viewport at a time (to look at a run by eye)."""
        scroller = ".jp-NotebookPanel .jp-WindowedPanel-outer"
        height, view = self.page.evaluate(
            f"() => {{ const e = document.querySelector('{scroller}'); return [e.scrollHeight, e.clientHeight]; }}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        for k, y in enumerate(range(0, max(1, height - view + step), step)):
            self.page.evaluate(f"(y) => {{ document.querySelector('{scroller}').scrollTop = y; }}", y)
            self.page.wait_for_timeout(300)
            self.page.screenshot(path=str(folder / f"{self.name}-{k:02d}.png"))

    def screenshot(self, locator: Any, path: Path, max_width: int = 640, colours: int = 256, pad: int = 8) -> Path:
        """A small PNG of one element: the viewport made tall enough to hold it, the white margins trimmed, scaled to
        `max_width` px at most and reduced to a palette of `colours`."""
        size = self.page.viewport_size
        locator.scroll_into_view_if_needed()
        box = locator.bounding_box()
        if box and box["height"] + 200 > size["height"]:
            self.page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 300})
            self.page.wait_for_timeout(500)
        try:
            png = locator.screenshot(animations="disabled", timeout=30_000)
        finally:
            self.page.set_viewport_size(size)
        return small_png(png, path, max_width=max_width, colours=colours, pad=pad)


def small_png(png: bytes, path: Path, max_width: int = 640, colours: int = 256, pad: int = 8) -> Path:
    """`png` (a screenshot) saved as a small PNG at `path`: white margins trimmed (keeping `pad` px), scaled down to
    `max_width` px at most and reduced to a palette of `colours`."""
    from PIL import Image, ImageChops

    img = Image.open(io.BytesIO(png)).convert("RGB")
    bbox = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()
    if bbox:
        img = img.crop(
            (
                max(0, bbox[0] - pad),
                max(0, bbox[1] - pad),
                min(img.width, bbox[2] + pad),
                min(img.height, bbox[3] + pad),
            )
        )
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    img = img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path
