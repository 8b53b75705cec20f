"""Images and figures: a tensor as a PIL image, PNG bytes of a figure or image (for ipywidgets.Image), image strips,
the loss curve, and the diversity / ablation figures (PCA scatter, colour histograms, trade-off and sweep panels).
All figures are plain `matplotlib.figure.Figure` objects (no pyplot state).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


def tensor_image(x: Any) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] (what the trainer sees) as a PIL image."""
    from catlab.tensors import unit_range_to_pixels

    return Image.fromarray(unit_range_to_pixels(x))


def fig_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (for ipywidgets.Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def pil_png(img: Image.Image) -> bytes:
    """PNG bytes of a PIL image (for ipywidgets.Image)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_strip(
    images: Sequence[Image.Image],
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    size: float = 1.9,
    title: str | None = None,
) -> Figure:
    """Images in a grid with a wrapped caption above each (nearest upscaling keeps 32 px images crisp)."""
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols, (size + 0.45) * nrows))
    for i, img in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
        ax.set_axis_off()
        if titles:
            ax.set_title("\n".join(textwrap.wrap(titles[i], 22)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_figure(
    history: Sequence[Mapping[str, float]],
    title: str = "training loss",
    total_steps: int | None = None,
    size: tuple[float, float] = (5.0, 3.0),
) -> Figure:
    """Loss terms against step (thin: raw, thick: moving average); the CAT and prior terms when present."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    window = max(1, len(history) // 10)
    for key, colour in (("loss", "black"), ("ldm", "tab:blue"), ("cat", "tab:red"), ("prior", "tab:green")):
        pts = [(s, h[key]) for s, h in zip(steps, history) if key in h]
        if not pts or (key == "ldm" and all("cat" not in h and "prior" not in h for h in history)):
            continue  # ldm equals loss when there is no second term
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=colour, alpha=0.25, lw=0.8)
        ax.plot(
            xs,
            smooth(ys, window),
            color=colour,
            lw=1.8,
            label={"ldm": "L_LDM (trigger)", "cat": "CAT term (unweighted)", "prior": "prior term"}.get(key, "total"),
        )
    ax.set_xlabel("step")
    ax.set_yscale("log")
    if total_steps:
        ax.set_xlim(0, total_steps)
    ax.set_title(title, fontsize=10)
    if history:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pca_scatter(
    groups: Mapping[str, np.ndarray],
    title: str = "embeddings, first two principal components",
    size: tuple[float, float] = (5.0, 4.2),
) -> Figure:
    """Scatter of each group's embeddings (N_g, D) on the top two principal components of all of them (numpy SVD)."""
    names = list(groups)
    allx = np.concatenate([np.asarray(groups[n], dtype=np.float64) for n in names])  # (N, D)
    mean = allx.mean(0)
    _, s, vt = np.linalg.svd(allx - mean, full_matrices=False)
    var = s**2 / max((s**2).sum(), 1e-12)
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    markers = "o^sDv*P"
    for i, n in enumerate(names):
        xy = (np.asarray(groups[n], dtype=np.float64) - mean) @ vt[:2].T  # (N_g, 2)
        ax.scatter(xy[:, 0], xy[:, 1], label=f"{n} ({len(xy)})", marker=markers[i % len(markers)], alpha=0.75, s=36)
    ax.set_xlabel(f"PC 1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({var[1]:.0%})" if len(var) > 1 else "PC 2")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def colour_histograms(
    groups: Mapping[str, Sequence[str]],
    title: str = "colours the oracle reads",
    size_per_panel: tuple[float, float] = (2.8, 2.4),
) -> Figure:
    """One bar chart per group of the oracle's colour readings, bars drawn in the colour they count."""
    from catlab.evaluation.metrics import colour_entropy
    from catlab.toyworld.world import COLOUR_NAMES, COLOURS

    n = max(1, len(groups))
    fig = Figure(figsize=(size_per_panel[0] * n, size_per_panel[1]))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (name, colours) in zip(axes, groups.items()):
        counts = [list(colours).count(c) for c in COLOUR_NAMES]
        ax.bar(
            range(len(COLOUR_NAMES)),
            counts,
            color=[np.array(COLOURS[c]) / 255 for c in COLOUR_NAMES],
            edgecolor="black",
            lw=0.5,
        )
        ax.set_xticks(range(len(COLOUR_NAMES)), [c[:3] for c in COLOUR_NAMES], fontsize=7, rotation=90)
        ent = colour_entropy(list(colours), COLOUR_NAMES) if len(colours) else float("nan")
        ax.set_title(f"{name}\nentropy {ent + 0.0:.2f}", fontsize=9)  # + 0.0: no "-0.00"
    axes[0].set_ylabel("images")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tradeoff_figure(
    table: Any,
    x: str = "KP",
    y: str = "IS",
    label: str = "name",
    group: str | None = "sweep",
    size: tuple[float, float] = (5.5, 4.2),
    title: str | None = None,
    frontier: bool = True,
) -> Figure:
    """`y` against `x` for each row of a DataFrame, labelled, coloured by `group`; with `frontier`, the Pareto frontier
    (the points no other point beats on both x and y, higher = better) dashed."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(table[group])) if group else [None]
    for g in groups:
        sub = table if g is None else table[table[group] == g]
        ax.scatter(sub[x], sub[y], label=g, s=40, alpha=0.85)
        for _, row in sub.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pts = table[[x, y]].dropna().to_numpy(dtype=float)
    if frontier and len(pts):
        front = [p for p in pts if not any((q[0] >= p[0]) and (q[1] >= p[1]) and (q != p).any() for q in pts)]
        front = np.array(sorted(front, key=lambda p: p[0]))
        ax.plot(front[:, 0], front[:, 1], "k--", lw=1, alpha=0.6, label="frontier")
    ax.set_xlabel(f"{x} (higher = base knowledge kept)" if x == "KP" else x)
    ax.set_ylabel(f"{y} (higher = more like the concept)" if y == "IS" else y)
    ax.ticklabel_format(useOffset=False)
    ax.set_title(title or f"{y} vs {x}", fontsize=10)
    if group or frontier:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(
    table: Any,
    params: Sequence[str],
    reference: Mapping[str, Any],
    metrics: Sequence[str] = ("IS", "KP", "KPS"),
    size_per_panel: tuple[float, float] = (3.0, 2.6),
) -> Figure:
    """One panel per swept parameter: each metric against that parameter, over the rows whose other parameters
    equal `reference` (so the reference run appears in every panel, marked with a ring)."""
    fig = Figure(figsize=(size_per_panel[0] * len(params), size_per_panel[1]))
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params):
        mask = np.ones(len(table), dtype=bool)
        for q in params:
            if q != p:
                mask &= (table[q] == reference[q]).to_numpy()
        sub = table[mask].sort_values(p)
        for m in metrics:
            ax.plot(sub[p], sub[m], marker="o", label=m)
            ref = sub[sub[p] == reference[p]]
            ax.scatter(ref[p], ref[m], s=120, facecolors="none", edgecolors="black", lw=1)
        ax.set_xlabel(p)
        ax.set_xticks(sorted(set(sub[p])))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    handles, labels = axes[
        0
    ].get_legend_handles_labels()  # one legend for all panels, beside the title: inside a panel it hid points
    fig.legend(handles, labels, loc="upper right", ncol=len(metrics), fontsize=8, frameon=False)
    fig.suptitle("each panel changes one setting; ring = reference run", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def multi_concept_figure(
    table: Any,
    scores: Sequence[str] = ("identity_vs_single", "trigger_crosstalk", "paired_preservation", "untouched_worst"),
    bars: Mapping[str, float] | None = None,
    size_per_panel: tuple[float, float] = (3.2, 2.8),
) -> Figure:
    """One panel per score of `multi_concept_table` (rows: model x concept): a bar per model, one colour per concept,
    with each score's bar (`bars`, default the claim of docs/results.md) dashed."""
    bars = {"identity_vs_single": 0.9, "trigger_crosstalk": 0.05, "class_crosstalk": 0.05, "paired_preservation": 0.8,
            "untouched_paired_preservation": 0.8, "untouched_worst": 0.8} if bars is None else bars  # fmt: skip
    models, concepts = list(dict.fromkeys(table["model"])), list(dict.fromkeys(table["concept"]))
    fig = Figure(figsize=(size_per_panel[0] * len(scores), size_per_panel[1] + 0.12 * max(map(len, models))))
    axes = fig.subplots(1, len(scores), squeeze=False)[0]
    width = 0.8 / len(concepts)
    for ax, score in zip(axes, scores):
        for k, concept in enumerate(concepts):
            values = table[table["concept"] == concept].set_index("model")[score].reindex(models)
            ax.bar(np.arange(len(models)) + (k - (len(concepts) - 1) / 2) * width, values.to_numpy(dtype=float),
                   width, label=concept)  # fmt: skip
        if score in bars:
            ax.axhline(bars[score], color="black", ls="--", lw=1)
        values = table[score].to_numpy(dtype=float)
        ax.set_ylim(0, max(1.05, 1.05 * np.nanmax(values, initial=0.0)))  # rates on one scale, 0 at the bottom
        if np.isnan(values).all():  # e.g. identity against single adapters that never draw their concept
            ax.text(0.5, 0.4, "no value: see the table", transform=ax.transAxes, ha="center", fontsize=8)
        ax.set_xticks(range(len(models)), models, rotation=60, ha="right", fontsize=7)
        ax.set_title(score, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(concepts), fontsize=8, frameon=False)
    fig.suptitle("each concept of each model; dashed = the bar", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
