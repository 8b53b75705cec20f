"""The demo report: the grid that tells the story, the metric table, the diversity figure, loss curves and costs.

Written as Markdown + PNGs and as one self-contained HTML file (images embedded), atomically.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from catlab.config import TrainConfig, share_row_count
from catlab.demo.recipe import COLUMNS, METHOD_SETTINGS, METHODS, DemoResults, DemoRun
from catlab.environment import environment_line
from catlab.evaluation.images import EvalSampling
from catlab.files import save_image_atomic, write_text_atomic
from catlab.sampling.grids import image_grid


def format_table(table: pd.DataFrame, as_frame: bool = False) -> str | pd.DataFrame:
    """mean ± std per score, as text for the terminal (or as a DataFrame of strings for an HTML table)."""
    out = pd.DataFrame({"method": table["method"]})
    for col in COLUMNS:
        if col in table:
            std = table.get(f"{col}_std")
            out[col] = [
                "—"  # a score the concept does not have (a setting, for a concept shown on varied backdrops)
                if not np.isfinite(m)
                else f"{m:.3f}" + (f" ± {s:.3f}" if s is not None and np.isfinite(s) else "")
                for m, s in zip(table[col], std if std is not None else [None] * len(table))
            ]
    return out if as_frame else out.to_string(index=False)


def _open(out: Path, rel: str) -> Image.Image:
    return Image.open(out / "eval" / rel).convert("RGB")


def demo_method_grid(
    out: Path, per_image: pd.DataFrame, runs: list[DemoRun], prompt_kind: str, template: str, n_cols: int, title: str
) -> Image.Image:
    """Rows: base model and each method (training seed 0); columns: the same sampling seeds."""
    from catlab.evaluation.scoring import BASE

    rows, labels = [], []
    first = {r.key: r.name for r in sorted(runs, key=lambda r: -r.seed)}
    for label, method in [("base model", BASE)] + [(METHODS[g], m) for g, m in first.items()]:
        sel = per_image[
            (per_image.method == method) & (per_image.kind == prompt_kind) & (per_image.template == template)
        ].sort_values("seed")
        rows.append([_open(out, f) for f in sel["image"].head(n_cols)])
        labels.append(label)
    seeds = sorted(per_image["seed"].unique())[:n_cols]
    return image_grid(rows, labels, [f"seed {s}" for s in seeds], cell=64, title=title)


def headline_grid(out: Path, per_image: pd.DataFrame, runs: list[DemoRun], concept, n_cols: int) -> Image.Image:
    template = per_image["template"].iloc[0]
    trig_prompt = per_image[(per_image.template == template) & (per_image.kind == "trigger")]["prompt"].iloc[0]
    cls_prompt = per_image[(per_image.template == template) & (per_image.kind == "class")]["prompt"].iloc[0]
    left = demo_method_grid(
        out, per_image, runs, "trigger", template, n_cols, f'"{trig_prompt}" (should draw the concept)'
    )
    right = demo_method_grid(
        out, per_image, runs, "class", template, n_cols, f'"{cls_prompt}" (should stay any {concept.class_word})'
    )
    refs = [Image.open(p).convert("RGB") for p in sorted((out / "concept").glob("*.png"))]
    ref = image_grid([refs], ["training images"], None, cell=64)
    w = left.width + right.width + 16
    canvas = Image.new("RGB", (w, ref.height + 8 + max(left.height, right.height)), "white")
    canvas.paste(ref, (0, 0))
    canvas.paste(left, (0, ref.height + 8))
    canvas.paste(right, (left.width + 16, ref.height + 8))
    return canvas


def paired_grid(out: Path, per_image: pd.DataFrame, runs: list[DemoRun], n_cols: int) -> Image.Image:
    """Class samples per seed: the base model's on top, each method's below it; a green frame marks a sample the oracle
    reads as the same colour and shape as the base's sample from that seed (paired preservation), a red frame one that is not."""
    from PIL import ImageOps

    template = per_image["template"].iloc[0]
    if "preserved" not in per_image:  # no oracle: the plain grid
        return demo_method_grid(out, per_image, runs, "class", template, n_cols, "class samples, same seeds")
    from catlab.evaluation.scoring import BASE

    first = {r.key: r.name for r in sorted(runs, key=lambda r: -r.seed)}
    rows = []
    for method in [BASE] + list(first.values()):
        sel = (
            per_image[(per_image.method == method) & (per_image.kind == "class") & (per_image.template == template)]
            .sort_values("seed")
            .head(n_cols)
        )
        rows.append(
            [
                ImageOps.expand(
                    _open(out, f).resize((60, 60)),
                    border=2,
                    fill=(200, 200, 200) if method == BASE else ((40, 170, 60) if kept == 1.0 else (220, 40, 40)),
                )
                for f, kept in zip(sel["image"], sel["preserved"])
            ]
        )
    labels = ["base model"] + [METHODS[g] for g in first]
    seeds = sorted(per_image["seed"].unique())[:n_cols]
    return image_grid(
        rows,
        labels,
        [f"seed {s}" for s in seeds],
        cell=64,
        title=f'"{per_image[(per_image.template == template) & (per_image.kind == "class")]["prompt"].iloc[0]}": '
        "green = same colour and shape as the base model's sample, red = changed",
    )


def colour_figure(per_image: pd.DataFrame, runs: list[DemoRun], concept):
    """Oracle colour histogram of class-prompt generations (prompts that name no colour), per method."""
    from matplotlib.figure import Figure

    from catlab.evaluation.scoring import BASE
    from catlab.toyworld.world import COLOURS

    groups = [("base model", [BASE])] + [(name, [r.name for r in runs if r.key == g]) for g, name in METHODS.items()]
    cls = per_image[(per_image.kind == "class") & per_image["colour_entropy"].notna()]
    fig = Figure(figsize=(9, 3.4))  # not pyplot: no global figure state, no backend to choose
    ax = fig.subplots()
    names = list(COLOURS) + ["= concept"]
    width = 0.8 / len(groups)
    for k, (label, members) in enumerate(groups):
        sel = cls[cls.method.isin(members)]
        if sel.empty:
            continue
        shares = [np.mean(sel.oracle_colour == c) for c in COLOURS] + [
            np.mean(sel.oracle_concept == getattr(concept, "name", ""))
        ]
        ax.bar(np.arange(len(names)) + (k - (len(groups) - 1) / 2) * width, shares, width, label=label)
    ax.set_xticks(np.arange(len(names)), names)
    for tick, c in zip(ax.get_xticklabels(), list(COLOURS.values()) + [(0, 0, 0)]):
        tick.set_color(tuple(v / 255 for v in c))
    ax.set_ylabel("share of generations")
    ax.set_title(f'What "a {concept.class_word}" draws, read by the oracle (colour, and whether it is the concept)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def demo_loss_figure(runs: list[DemoRun]):
    """Smoothed denoising loss and regulariser terms of each method's first run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3))
    axes = fig.subplots(1, 2)
    for key, name in METHODS.items():
        hist = next((r.history for r in runs if r.key == key), None)
        if not hist:
            continue
        steps = [h["step"] for h in hist]
        ldm = pd.Series([h["ldm"] for h in hist]).rolling(20, min_periods=1).mean()
        axes[0].plot(steps, ldm, label=name)
        for key, style in (("cat", "-"), ("prior", "--")):
            if key in hist[-1]:
                vals = pd.Series([h.get(key, np.nan) for h in hist]).rolling(20, min_periods=1).mean()
                axes[1].plot(steps, vals, style, label=f"{name}: {key} term")
    axes[0].set(title="denoising loss on the concept (smoothed)", xlabel="step")
    axes[1].set(title="regulariser terms (unweighted, smoothed)", xlabel="step", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _save_fig(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return save_image_atomic(Image.open(io.BytesIO(buf.getvalue())), path)


# the HTML report's look: a readable column, a score table that scrolls sideways on a narrow screen
REPORT_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em} .wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom} .sd{color:#777;font-size:11px} img{max-width:100%}
td:first-child,th:first-child{text-align:left} pre{background:#f6f6f6;padding:8px;overflow-x:auto}"""


def _b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_text(markdown: str) -> str:
    """The report's Markdown sentences as HTML: escaped, with `code` spans."""
    import html
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown))


def _html_scores(table: pd.DataFrame) -> str:
    """The score table as HTML that fits a page: each std under its mean, long names allowed to break."""
    import html

    cells = format_table(table, as_frame=True).map(
        lambda v: html.escape(v).replace(" ± ", '<br><span class="sd">± ') + ("</span>" if " ± " in v else "")
    )
    cells.columns = [html.escape(c).replace("_", "_<wbr>") for c in cells.columns]
    return cells.to_html(index=False, classes="scores", border=0, escape=False)


def describe_eval_seeds(sampling: EvalSampling) -> str:
    """How many sampling seeds each prompt was evaluated on."""
    seeds, trigger_seeds = (len(ss) for ss in sampling.seed_lists())
    if trigger_seeds == seeds:
        return f"{seeds} sampling seeds per prompt"
    return f"{seeds} sampling seeds for the class prompt and {trigger_seeds} for the trigger prompt"


def describe_cat_term(cfg: TrainConfig) -> str:
    """CAT's term in words, as the config sets it: its weight, what it holds and on which images."""
    held = (
        f"the guided class prediction (scale {cfg.cat_guidance:g})"
        if cfg.cat_guidance
        else "the trigger-free prediction"
    )
    if cfg.cat_null_share:
        held += f" (the caption empty on {cfg.cat_null_share:.0%} of the rows)"
    anchored = cfg.cat_anchor in ("class", "both")
    images = "the base model's class images" if anchored else "the concept's images"
    if cfg.cat_share < 1:
        rows = share_row_count(cfg.batch_size, cfg.cat_share)
        images = (
            f"{rows} of {images} per step (beside {cfg.batch_size} concept images)"
            if anchored
            else f"{rows} of each step's {cfg.batch_size} concept images"
        )
    if cfg.cat_anchor == "both":
        images += " and as many of the concept's" if cfg.cat_share < 1 else " and the concept's"
    when = f", on one step in {cfg.cat_every} (weighted by {cfg.cat_every})" if cfg.cat_every > 1 else ""
    return f"CAT's term: λ {cfg.cat_lambda:g} on {held}, at {images}{when}"


def describe_prior(cfg: TrainConfig) -> str:
    """DreamBooth's prior in words: how many of the base model's class images each step adds, at what weight."""
    rows = share_row_count(cfg.batch_size, cfg.prior_share)
    return (
        f"DreamBooth's prior: {rows} of the base model's class images per step (beside {cfg.batch_size} concept images), "
        f"weight {cfg.prior_loss_weight:g}"
    )


def describe_setting(results: DemoResults) -> str:
    """The report's opening paragraph: the concept, the shared recipe, and what each score means."""
    c, recipe = results.concept, results.recipe
    cfg = TrainConfig(**{**recipe.train, "regime": "cat"})  # the recipe as a config: every field resolved
    return (
        f"Toy concept `{c.name}`: trigger `{c.trigger}`, class `{c.class_word}`. Each method trained with the same data, "
        f"{cfg.steps} steps, lr {cfg.learning_rate} ({cfg.lr_scheduler}), rank {cfg.rank}, batch {cfg.batch_size}, over "
        f"{results.n_seeds} training seed(s); {describe_cat_term(cfg)}; the paper's row: "
        f"{describe_cat_term(TrainConfig(**{**recipe.train, **METHOD_SETTINGS['paper_cat']}))}; {describe_prior(cfg)}; evaluated on "
        f"{describe_eval_seeds(recipe.sampling)}"
        + (", guidance's unconditional branch from the base model" if recipe.sampling.unconditional == "base" else "")
        + ". Scores: mean ± std over training seeds. "
        "IS, KP, KPS, PRES in [0, 1] (CLIP (cos+1)/2); colour entropy normalised to [0, 1]; collapse rate = share of "
        "class-prompt images the oracle reads as the concept; identity_acc = share of trigger-prompt images it reads as the "
        "concept; paired_preservation = share of class-prompt seeds whose image has the oracle colour and shape of the base "
        "model's image from the same seed; colour_distance = total-variation distance of the class colours to the base "
        f"model's; valid_rate = share of class-prompt images the oracle confidently reads as a {c.class_word}. "
        "Fidelity (trigger-prompt images held to the concept's photos, from the pixels): colour_fidelity = share whose "
        "object has the photos' colour mix, setting_fidelity = share on the photos' backdrop (empty when the photos have "
        "none in common), size_fidelity = share of the photos' size; fidelity = share right in all of these, in shape "
        "and valid; trigger_colour_distance = total-variation distance of the object's colour mix to the photos'; "
        "trigger_valid_rate = share with an object and without speckle. Beyond the trained class: "
        f"held_out_paired_preservation and held_out_colour_distance, the same scores on {_held_out_words(results)}, "
        "against the base model's images of the same prompt and seed; KPS's KP half averages the class's KP with "
        "theirs (docs/metrics.md)."
    )


def _held_out_words(results: DemoResults) -> str:
    """The held-out prompts in words, e.g. '"a square", "a star" (8 seeds each)'."""
    sampling = results.recipe.sampling_for(results.concept.class_word)
    prompts = ", ".join(f'"{p}"' for _, p in sampling.held_out_prompts(results.concept.class_word))
    n = len(sampling.held_out_seed_list())
    return f"{prompts} ({n} seed{'s' if n > 1 else ''} each)"


def write_report(results: DemoResults) -> Path:
    """report.md + PNGs + a self-contained report.html in `results.out`; returns the HTML path."""
    out, per_image, runs, concept = results.out, results.per_image, results.runs, results.concept
    n_cols = results.recipe.grid_seeds
    figs = {
        "grid.png": save_image_atomic(headline_grid(out, per_image, runs, concept, n_cols), out / "grid.png"),
        "paired.png": save_image_atomic(paired_grid(out, per_image, runs, n_cols), out / "paired.png"),
        "colours.png": _save_fig(colour_figure(per_image, runs, concept), out / "colours.png"),
        "losses.png": _save_fig(demo_loss_figure(runs), out / "losses.png"),
    }
    intro = describe_setting(results)
    cost_txt = results.costs.to_string(index=False, float_format=lambda v: f"{v:.2f}")
    write_text_atomic(out / "report.md", _markdown(results, intro, cost_txt))
    write_text_atomic(
        out / "report.html", _html(results, intro, cost_txt, {name: _b64(path) for name, path in figs.items()})
    )
    return out / "report.html"


def _markdown(results: DemoResults, intro: str, cost_txt: str) -> str:
    """report.md: the same sections as the HTML, with the PNGs beside it."""
    return "\n".join([
        "# catlab demo: LoRA vs DreamBooth-LoRA vs CAT on the toy world", "", intro, "",
        "![grid](grid.png)", "", "## Scores", "", "```", format_table(results.table), "```", "",
        "## Does the class stay the base model's?", "", "![paired](paired.png)", "", "![colours](colours.png)", "",
        "## Training", "", "![losses](losses.png)", "", "## Cost", "", "```", cost_txt, "```", "",
        f"Total wall time: {results.total_s:.0f} s. Rerun: `{results.rerun}`.", "", _ran_on(results), "",
    ])  # fmt: skip


def _html(results: DemoResults, intro: str, cost_txt: str, img: dict[str, str]) -> str:
    """report.html: self-contained, the figures embedded as data URLs."""
    html_table, total_s, rerun = _html_scores(results.table), results.total_s, results.rerun
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>catlab demo</title>
<style>{REPORT_CSS}</style></head><body>
<h1>catlab demo: LoRA vs DreamBooth-LoRA vs CAT</h1><p>{_html_text(intro)}</p>
<img alt="what each method draws for the trigger prompt and the class prompt" src="{img["grid.png"]}">
<h2>Scores (mean ± std over training seeds)</h2><div class="wrap">{html_table}</div>
<h2>Does the class stay the base model's?</h2>
<img alt="class samples per seed, base model and each method" src="{img["paired.png"]}">
<img alt="oracle colours of the class samples per method" src="{img["colours.png"]}">
<h2>Training</h2><img alt="loss curves" src="{img["losses.png"]}">
<h2>Cost</h2><pre>{cost_txt}</pre>
<p>Total wall time {total_s:.0f} s. Rerun: <code>{_html_text(rerun)}</code>.</p>
<p>{_html_text(_ran_on(results))}</p></body></html>"""


def _ran_on(results: DemoResults) -> str:
    """Where the numbers came from (catlab.environment): what a reader needs when the digits do not reproduce."""
    if not results.environment:
        return "Ran on: not recorded."
    return (
        f"Ran on: {environment_line(results.environment)}. The same code and seeds give these digits again on the "
        "same kind of processor with the same libraries; with other machines or libraries they have come out differently "
        '(docs/results.md, "The same demo on another machine").'
    )
