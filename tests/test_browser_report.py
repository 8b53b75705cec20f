"""The demo's HTML report in headless Chromium at a laptop's width (1280 px): the scores are a real table that fits,
every image loads, the sections are there. With CATLAB_SCREENSHOTS=1 and CATLAB_REPORT_HTML=<a real demo's
report.html>, the top of that report becomes docs/img/report.png."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from chromium_session import chromium_browser, fail_with_screenshot, log
from jupyterlab_browser import small_png

pytestmark = [pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


REPORT_HEADINGS = ("Scores", "Does the class stay the base model's?")  # each the start of an <h2>
REPORT_METHODS = ["base model", "LoRA", "DreamBooth-LoRA", "CAT", "CAT (paper's term)"]  # the rows of the scores table

# What the report looks like at the viewport's width: page and table widths, images, headings, anything wider than the page.
JS_REPORT = """() => {
  const doc = document.documentElement, box = e => e.getBoundingClientRect();
  const table = document.querySelector('table.scores');
  const wrap = table && table.closest('.wrap');
  let heading = '';
  const images = [];
  for (const e of document.body.querySelectorAll('h1, h2, img')) {
    if (e.tagName !== 'IMG') { heading = e.innerText.trim(); continue; }
    images.push({after: heading, complete: e.complete, natural: [e.naturalWidth, e.naturalHeight],
                 shown: [Math.round(box(e).width), Math.round(box(e).height)], src: e.getAttribute('src').slice(0, 22)});
  }
  const scrolls = wrap && ['auto', 'scroll'].includes(getComputedStyle(wrap).overflowX);
  const inWrap = e => scrolls && wrap.contains(e) && e !== wrap;  // may scroll inside its box
  const over = new Set([...document.body.querySelectorAll('*')].filter(e => box(e).right > doc.clientWidth + 1 && !inWrap(e)));
  const wide = [...over].filter(e => !over.has(e.parentElement))  // the outermost of them
    .map(e => `<${e.tagName.toLowerCase()}${e.className ? ' class=' + e.className : ''}> reaches x = ${Math.round(box(e).right)}`);
  return {
    viewport: window.innerWidth, visible: doc.clientWidth, page: doc.scrollWidth, body: document.body.scrollWidth,
    headings: [...document.querySelectorAll('h1, h2')].map(h => h.tagName.toLowerCase() + ': ' + h.innerText.trim()),
    table: table && {width: Math.round(box(table).width), bottom: Math.round(box(table).bottom + window.scrollY),
                     header: [...table.querySelectorAll('thead th')].map(t => t.innerText.trim()),
                     rows: [...table.querySelectorAll('tbody tr')].map(tr => [...tr.cells].map(c => c.innerText.trim()))},
    wrap: wrap && {scroll: wrap.scrollWidth, client: wrap.clientWidth, overflowX: getComputedStyle(wrap).overflowX,
                   hidden: [...table.querySelectorAll('thead th')].filter(t => box(t).right > box(wrap).right + 1)
                             .map(t => t.innerText.trim())},
    images, wide,
  };
}"""


@pytest.fixture(scope="module")
def demo_report(tiny_assets, tmp_path_factory) -> Path:
    """report.html of one `catlab demo --quick --seeds 2` on the tiny toy world (as tests/test_demo.py runs it): two
    training seeds, so that the scores table has its "mean ± std" cells, as in a full demo (three seeds). With
    CATLAB_REPORT_HTML=path, that report instead (a real demo's, for the screenshot in the docs)."""
    from catlab.cli import main

    if os.environ.get("CATLAB_REPORT_HTML"):
        return Path(os.environ["CATLAB_REPORT_HTML"]).resolve()

    out = tmp_path_factory.mktemp("demo") / "demo"
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATLAB_TOYWORLD_DIR", str(tiny_assets))
        code = main(["demo", "--quick", "--seeds", "2", "--out", str(out)])
    if code != 0 or not (out / "report.html").is_file():
        pytest.fail(
            f"`catlab demo --quick --seeds 2 --out {out}` exited with {code} and wrote no report.html (its output is above)",
            pytrace=False,
        )
    log(f"demo report: catlab demo --quick in {time.monotonic() - t0:.1f} s")
    return out / "report.html"


@pytest.fixture(scope="module")
def report_png(tmp_path_factory) -> Path:
    """Where the report's screenshot goes: docs/img/report.png with CATLAB_SCREENSHOTS=1 and a real report to take it
    of (CATLAB_REPORT_HTML; the quick demo's tiny-world report is noise), else a temporary folder."""
    to_docs = os.environ.get("CATLAB_SCREENSHOTS") == "1" and os.environ.get("CATLAB_REPORT_HTML")
    return (ROOT / "docs" / "img" if to_docs else tmp_path_factory.mktemp("screenshots")) / "report.png"


def test_demo_report_in_chromium(demo_report: Path, browser, report_png: Path, tmp_path):
    """The demo's report.html as a person opens it on a laptop: the scores a real <table> that does not make the page
    scroll sideways (the table may scroll inside its .wrap box), every embedded image decoded, the headings there."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"page error: {e}"))
    t0 = time.monotonic()
    try:
        page.goto(demo_report.as_uri(), wait_until="load", timeout=60_000)
        try:  # data: URLs load with the page; decoding is bounded too
            page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
        except Exception as e:
            raise AssertionError(f"report.html: images still loading after 30 s ({str(e).splitlines()[0]})") from None
        r = page.evaluate(JS_REPORT)
        where = f" (report.html at {VIEWPORT['width']}x{VIEWPORT['height']}; browser console: {console[-5:]})"

        # the headings
        h2 = [h.split(": ", 1)[1] for h in r["headings"] if h.startswith("h2: ")]
        missing = [t for t in REPORT_HEADINGS if not any(h.startswith(t) for h in h2)]
        assert not missing, f"report.html: no heading starting {missing}; its headings: {r['headings']}" + where

        # the scores: a real table, one row per method, every cell filled
        t = r["table"]
        assert t is not None, (
            'report.html: no <table class="scores"> (the scores must be an HTML table, not text)' + where
        )
        assert t["header"][:1] == ["method"] and len(t["header"]) > 4, (
            f"report.html: the scores table's header is {t['header']}" + where
        )
        methods = [row[0] for row in t["rows"]]
        assert methods == REPORT_METHODS, (
            f"report.html: the scores table's rows are {methods}, expected {REPORT_METHODS}" + where
        )
        empty = [
            (row[0], t["header"][i])
            for row in t["rows"]
            for i, c in enumerate(row)
            if not c or c.lower().startswith("nan")
        ]
        assert not empty, f"report.html: empty or nan cells in the scores table (method, column): {empty}" + where

        # the page does not scroll sideways; the table may, inside its .wrap box
        assert r["page"] <= r["visible"] and r["body"] <= r["visible"], (
            f"report.html scrolls sideways at {r['viewport']} px: the page is {r['page']} px wide (body {r['body']} px), "
            f"{r['visible']} px visible; wider than the page: {r['wide'][:8]}" + where
        )
        assert not r["wide"], (
            f"report.html: elements reach past the right edge of the page ({r['visible']} px): {r['wide'][:8]}" + where
        )
        w = r["wrap"]
        assert w is not None, (
            "report.html: the scores table is not in its .wrap box (which scrolls a wide table sideways)" + where
        )
        if w["scroll"] > w["client"]:
            assert w["overflowX"] in ("auto", "scroll"), (
                f"report.html: the scores table needs {w['scroll']} px, its box has {w['client']} px and overflow-x {w['overflowX']!r}, "
                "so part of it cannot be seen" + where
            )
            log(
                f"demo report: the scores table ({t['width']} px, {len(t['header'])} columns) is wider than its box "
                f"({w['client']} px) at {r['viewport']} px: it scrolls sideways in .wrap, {w['scroll'] - w['client']} px out of view "
                f"(columns {', '.join(w['hidden'])})"
            )
        else:
            log(
                f"demo report: the scores table ({t['width']} px, {len(t['header'])} columns) fits its box ({w['client']} px) "
                f"at {r['viewport']} px"
            )

        # every embedded image decoded
        imgs = r["images"]
        assert len(imgs) == 4, (
            f"report.html shows {len(imgs)} images, expected 4 (grid, paired, colours, losses): {imgs}" + where
        )
        broken = [i for i in imgs if not (i["complete"] and i["natural"][0] > 0)]
        assert not broken, f"report.html: images that did not load (naturalWidth 0): {broken}" + where
        linked = [i["src"] for i in imgs if not i["src"].startswith("data:image/png;base64")]
        assert not linked, f"report.html: images not embedded: {linked}" + where
        for i in imgs:
            scale = f", scaled to {i['shown'][0] / i['natural'][0]:.0%}" if i["shown"][0] < i["natural"][0] else ""
            log(
                f"demo report: image after {i['after'][:40]!r}: {i['natural'][0]}x{i['natural'][1]} px, "
                f"shown {i['shown'][0]}x{i['shown'][1]}{scale}"
            )
        if console:
            log(f"demo report: browser console: {console}")

        # the top of the report down to the scores table, as a picture
        height = min(t["bottom"] + 24, 4000)
        png = page.screenshot(
            clip={"x": 0, "y": 0, "width": r["visible"], "height": height}, full_page=True, animations="disabled"
        )
        small_png(png, report_png, max_width=800)
        log(
            f"demo report: passed in {time.monotonic() - t0:.1f} s; screenshot {report_png} ({report_png.stat().st_size // 1024} KB)"
        )
    except AssertionError as e:
        fail_with_screenshot(e, page, tmp_path / "report-failure.png", full_page=True)
    finally:
        context.close()
