"""Draw docs/img/architecture.png: catlab's layers as pyproject.toml's import contracts define them.

    .venv/bin/python scripts/draw_architecture.py

The layers, their order and the toy world's place come from [tool.importlinter] in pyproject.toml; the modules shown in
each box come from the files in catlab/. Rerun it whenever either changes: the picture then follows the contracts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import tomllib
from matplotlib.figure import Figure  # no pyplot: no display, no backend state
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "architecture.png"
DPI = 130  # 9 in wide: 1170 px, shown at about 900 px on GitHub

# the bands the eye reads, each one or more rows of the one-way layers contract (checked below against it)
BANDS = {
    "interfaces": ("catlab.cli", "catlab.widgets"),
    "demo": ("catlab.demo",),
    "training,\nevaluation": ("catlab.training", "catlab.evaluation"),
    "sampling": ("catlab.sampling",),
    "data,\nmodels": ("catlab.data", "catlab.models"),
    "foundation": ("catlab.config", "catlab.notices", "catlab.files", "catlab.tensors"),
}
COLOURS = {
    "interfaces": "#dbe9f6",
    "demo": "#e4dcf1",
    "training,\nevaluation": "#fbe3cf",
    "sampling": "#fdf3c4",
    "data,\nmodels": "#d9efdc",
    "foundation": "#e6e6e6",
}
TOY_COLOUR = "#f6d9e4"
TOY_TAGLINES = {
    "world": "shapes, captions, concepts",
    "build": "model builders",
    "pretrain": "the pretraining recipe",
    "oracle": "ground-truth reader",
    "assets": "the shipped weights",
}
# what a single-file module is for (a package's box lists its modules instead)
TAGLINES = {
    "catlab.cli": "catlab demo | train | eval | sample | toyworld",
    "catlab.config": "TrainConfig, ConceptConfig, YAML",
    "catlab.notices": "quiet_libraries()",
    "catlab.files": "atomic writes",
    "catlab.tensors": "pixels <-> [-1, 1], prompts -> states",
}


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def split(layer: str) -> list[str]:
    return [m.strip() for m in layer.split("|")]


def submodules(module: str) -> list[str]:
    """The modules of a package (files in its folder, without __init__); [] for a single-file module."""
    folder = ROOT / Path(*module.split("."))
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__") if folder.is_dir() else []


def inner_line(module: str, inner: dict[str, list[str]]) -> str:
    """A box's second line: its modules, in the order of its own layers contract when it has one ('a > b': a imports b)."""
    mods = submodules(module)
    if not mods:
        return TAGLINES.get(module, "")
    if module not in inner:
        return " · ".join(mods)
    layers = [[m.rsplit(".", 1)[1] for m in split(layer)] for layer in inner[module]]
    seen = {m for layer in layers for m in layer}
    text = " > ".join(" | ".join(layer) for layer in layers)
    rest = [m for m in mods if m not in seen]
    return text + ("  (+ " + ", ".join(rest) + ")" if rest else "")


def wrap(text: str, width_chars: int) -> str:
    return "\n".join(textwrap.wrap(text, width_chars, break_long_words=False, break_on_hyphens=False)) or text


def main() -> Path:
    cs = contracts()
    main_layers = next(c for c in cs if c["type"] == "layers" and any("catlab.cli" in layer for layer in c["layers"]))
    rows = [split(layer) for layer in main_layers["layers"]]
    inner = {}  # package -> its own layers, from the contracts whose modules all sit in one package
    for c in cs:
        if c["type"] == "layers" and c is not main_layers:
            pkg = {m.rsplit(".", 1)[0] for layer in c["layers"] for m in split(layer)}
            if len(pkg) == 1:
                inner[pkg.pop()] = c["layers"]
    in_bands = [m for band in BANDS.values() for m in band]
    assert sorted(in_bands) == sorted(m for r in rows for m in r), (
        "BANDS and the layers contract disagree: update BANDS"
    )
    toy_out = next(c for c in cs if c["type"] == "forbidden" and c["source_modules"] == ["catlab.toyworld"])
    toy_in = next(c for c in cs if c["type"] == "forbidden" and c["forbidden_modules"] == ["catlab.toyworld"])
    toy_may_use = [m for r in rows for m in r if m not in toy_out["forbidden_modules"]]  # what the toy world may import
    may_reach = [m for r in rows for m in r if m not in toy_in["source_modules"] and not m.startswith("catlab.models")]
    partly = {m.rsplit(".", 1)[0]: m.rsplit(".", 1)[1] for m in toy_in["source_modules"] if m.count(".") > 1}

    x0, x1, gap = 13.0, 69.5, 1.2  # the core's column (drawing units: 100 across); the toy world sits right of x1
    row_gap, line_h, title_h = 1.1, 2.3, 4.4
    band_of = {m: b for b, ms in BANDS.items() for m in ms}
    texts, heights = {}, []
    for row in rows:  # each box's text, and each row's height from its longest text
        w = (x1 - x0 - gap * (len(row) - 1)) / len(row)
        for m in row:
            texts[m] = wrap(inner_line(m, inner), int(w * 1.35))
        heights.append(title_h + line_h * max(texts[m].count("\n") + 1 for m in row))
    top = 6.0 + sum(heights) + row_gap * (len(rows) - 1)  # room for the title above
    legend_h = 5.0
    total = top + legend_h
    fig = Figure(figsize=(9, 9 * (total + 1.0) / 100), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(-legend_h - 1.5, top - 0.5)
    ax.axis("off")
    boxes: dict[str, tuple[float, float, float, float]] = {}  # module -> (x, y, w, h)
    y = top - 6.0
    for row, row_h in zip(rows, heights):
        y -= row_h
        w = (x1 - x0 - gap * (len(row) - 1)) / len(row)
        for k, m in enumerate(row):
            x = x0 + k * (w + gap)
            ax.add_patch(
                FancyBboxPatch(
                    (x, y),
                    w,
                    row_h,
                    boxstyle="round,pad=0,rounding_size=0.8",
                    fc=COLOURS[band_of[m]],
                    ec="#555555",
                    lw=0.9,
                )
            )
            ax.text(x + 1.0, y + row_h - 1.2, m, fontsize=10.5, fontweight="bold", va="top", family="DejaVu Sans Mono")
            ax.text(x + 1.0, y + row_h - 3.5, texts[m], fontsize=9, va="top", linespacing=1.15)
            boxes[m] = (x, y, w, row_h)
        y -= row_gap
    bottom = min(b[1] for b in boxes.values())

    for band, mods in BANDS.items():  # band names in the left margin, with a bracket over their rows
        lo, hi = min(boxes[m][1] for m in mods), max(boxes[m][1] + boxes[m][3] for m in mods)
        ax.plot([x0 - 1.2, x0 - 1.6, x0 - 1.6, x0 - 1.2], [hi, hi, lo, lo], color="#888888", lw=0.8)
        ax.text(x0 - 2.2, (lo + hi) / 2, band, ha="right", va="center", fontsize=9, color="#333333", linespacing=1.0)
    ax.annotate(
        "", xy=(1.6, bottom), xytext=(1.6, top - 6.0), arrowprops=dict(arrowstyle="-|>", color="#777777", lw=1.2)
    )
    ax.text(2.4, top - 6.3, "imports\npoint down", fontsize=7.5, color="#555555", va="top")

    # the toy world, beside the core: from the bottom row up to the top of the sampling row
    mx, my, mw, mh = boxes["catlab.models"]
    tx = x1 + 5.0
    tw = 99.5 - tx
    ty = bottom
    th = boxes["catlab.sampling"][1] + boxes["catlab.sampling"][3] - ty
    ax.add_patch(
        FancyBboxPatch(
            (tx, ty),
            tw,
            th,
            boxstyle="round,pad=0,rounding_size=0.8",
            fc=TOY_COLOUR,
            ec="#555555",
            lw=0.9,
            ls=(0, (4, 2)),
        )
    )
    ax.text(
        tx + 1.0,
        ty + th - 1.2,
        "catlab.toyworld",
        fontsize=10.5,
        fontweight="bold",
        va="top",
        family="DejaVu Sans Mono",
    )
    short = lambda m: m.removeprefix("catlab.")  # noqa: E731
    reach = [short(m) + (f" (not {partly[m]})" if m in partly else "") for m in may_reach]
    chars = int(tw * 1.3)
    body = (
        "\n".join(f"{m}: {TOY_TAGLINES[m]}" if m in TOY_TAGLINES else m for m in submodules("catlab.toyworld"))
        + "\n\n"
        + wrap("one more base model beside the core, loaded by models (load_base('toyworld'))", chars)
        + "\n\n"
        + wrap("imports only " + ", ".join(short(m) for m in toy_may_use), chars)
        + "\n\n"
        + wrap("also read by " + ", ".join(reach), chars)
    )
    ax.text(tx + 1.0, ty + th - 3.6, body, fontsize=8.5, va="top", linespacing=1.25)
    ax.add_patch(
        FancyArrowPatch(
            (x1 + 0.2, my + mh / 2),
            (tx - 0.2, my + mh / 2),
            arrowstyle="-|>",
            mutation_scale=14,
            color="#333333",
            lw=1.4,
        )
    )
    ax.text((x1 + tx) / 2, my + mh / 2 + 0.6, "load", ha="center", va="bottom", fontsize=7.5)

    ax.text(
        50,
        top - 2.5,
        "catlab: the layers and the toy world",
        ha="center",
        va="center",
        fontsize=12.5,
        fontweight="bold",
    )
    legend = (
        "A box may import the boxes below it, never those above it or beside it (import-linter, pyproject.toml). "
        "Inside a box, a > b: a may import b, not the reverse. Drawn by scripts/draw_architecture.py from the contracts."
    )
    ax.text(1.0, bottom - 1.5, wrap(legend, 140), fontsize=8, color="#444444", va="top")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=DPI, facecolor="white")
    _shrink(OUT)
    return OUT


def _shrink(path: Path) -> None:
    """Re-save with a palette (the drawing has few colours): a fraction of the RGBA file's size."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


if __name__ == "__main__":
    out = main()
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KB)")
