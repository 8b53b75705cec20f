"""From per-image scores to tables: per training or sampling seed (`per_seed_scores`), per method with a 95% CI
(`summarise`), and a notebook view with the best adapter in bold (`style_summary`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from catlab.evaluation.fidelity import per_seed_fidelity
from catlab.evaluation.held_out import held_out_colour_distances, knowledge_half, per_seed_held_out
from catlab.evaluation.metrics import kps, mean_ci95
from catlab.evaluation.scoring import BASE, HIGHER_IS_BETTER, REAL_SCORES, SEED_SCORES, backbone_note


def per_seed_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed): IS, PS (trigger prompts), KP, PRES (class prompts), KPS = harmonic mean of that seed's IS and KP."""
    rows = []
    for (method, seed), g in df.groupby(["method", "seed"], sort=False):
        t, c = g[g["kind"] == "trigger"], g[g["kind"] == "class"]
        r = {
            "method": method,
            "seed": seed,
            "IS": t["IS"].mean(),
            "PS": t["PS"].mean(),
            "KP": c["KP"].mean(),
            "PRES": c["PRES"].mean(),
        }
        r |= per_seed_held_out(g[g["kind"] == "held_out"])
        r["KPS"] = kps(r["IS"], knowledge_half(r["KP"], r.get("held_out_KP")))
        for score in REAL_SCORES:  # over trigger prompts, like IS and PS; DINO-PRES over class prompts, like PRES
            if score in g:
                r[score] = (c if score == "DINO-PRES_cos" else t)[score].mean()
        if "attr_ok" in g:
            r |= {
                "collapse_rate": c["collapsed"].mean(),
                "attr_acc": c["attr_ok"].mean(),
                "identity_acc": t["identity_ok"].mean(),
                "paired_preservation": c["preserved"].mean(),
                "valid_rate": c["valid"].mean(),
                **per_seed_fidelity(t, c),
            }
        rows.append(r)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and 95% CI half-width of each score, across seeds (set scores: across class prompts).

    `summary.attrs["backbones"]` says which model and scaling produced each score (from `df.attrs`); when the
    real-world metrics (DINO_cos, CLIP-I_cos, CLIP-T_cos) are present, a `backbones` column says it in the table too.
    """
    seeds = per_seed_scores(df)
    sets = df[df["kind"] == "class"].groupby(["method", "prompt"], sort=False).first().reset_index()
    rows = []
    for method in dict.fromkeys(df["method"]):
        s, p = seeds[seeds["method"] == method], sets[sets["method"] == method]
        r: dict[str, Any] = {"method": method, "n_seeds": len(s), "n_prompts": len(p)}
        for score in HIGHER_IS_BETTER:
            src = s if score in SEED_SCORES else p
            if score in src:
                r[f"{score}_mean"], r[f"{score}_ci95"] = mean_ci95(src[score])
        held_out = held_out_colour_distances(df, method)  # a set score: across held-out prompts
        if len(held_out):
            r["held_out_colour_distance_mean"], r["held_out_colour_distance_ci95"] = mean_ci95(held_out)
        rows.append(r)
    summary = pd.DataFrame(rows)
    backbones = {k: v for k, v in df.attrs.get("backbones", {}).items() if f"{k}_mean" in summary}
    if backbones:
        summary.attrs["backbones"] = backbones
        if any(score in df for score in REAL_SCORES):
            summary["backbones"] = backbone_note(backbones)
    return summary


def style_summary(summary: pd.DataFrame, digits: int = 3):
    """A pandas Styler for notebooks: 'mean ± CI' per score, the best adapter per score in bold (base excluded)."""
    scores = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    means = summary.set_index("method")[[f"{s}_mean" for s in scores]]
    means.columns = scores
    table = pd.DataFrame(index=means.index)
    for s in scores:
        ci = summary.set_index("method")[f"{s}_ci95"]
        table[s] = [
            f"{m:.{digits}f}" + ("" if not np.isfinite(c) else f" ± {c:.{digits}f}") for m, c in zip(means[s], ci)
        ]

    def bold_best(col: pd.Series) -> list[str]:
        vals = means[col.name].drop(BASE, errors="ignore") if len(means) > 1 else means[col.name]
        if vals.isna().all():
            return [""] * len(col)
        best = vals.max() if HIGHER_IS_BETTER.get(col.name, True) else vals.min()
        return ["font-weight: bold" if m in vals.index and vals[m] == best else "" for m in col.index]

    arrows = {s: f"{s} {'↑' if HIGHER_IS_BETTER.get(s, True) else '↓'}" for s in scores}
    caption = "mean ± 95% CI across seeds (DIV, Vendi, colour entropy: across class prompts); bold = best adapter"
    backbones = summary.attrs.get("backbones") or {}
    if not backbones and "backbones" in summary and len(summary):  # a summary read back from summary.csv
        caption += f". {summary['backbones'].iloc[0]}"
    elif backbones:
        caption += f". {backbone_note({s: b for s, b in backbones.items() if s in scores})}"
    return table.style.apply(bold_best, axis=0).format_index(lambda s: arrows.get(s, s), axis=1).set_caption(caption)
