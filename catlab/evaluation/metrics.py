"""Scores for personalised diffusion models; `catlab.evaluation.protocol.evaluate` generates and applies them.

Identity similarity (IS), prompt similarity (PS) and knowledge preservation (KP) follow the CAT paper
(arXiv 2404.07554); KPS, their harmonic-mean aggregate, is catlab's definition (the paper's exact formula is
not public). Diversity: DreamBooth's DIV and the Vendi score (arXiv 2210.02410). The metrics real-world papers
report, DreamBooth's DINO, CLIP-I and CLIP-T (arXiv 2208.12242), are raw cosines: `image_similarity` (DINO or
CLIP image embeddings) and `prompt_similarity` (CLIP-T). docs/metrics.md has every formula, range, scaling and
direction. All scores are pure functions of embeddings (or oracle readings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- scores on embeddings


def normalise_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is then 0)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _rows(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what}: expected embeddings of shape (N, D) with N >= 1, got shape {x.shape}")
    return x


def cosine_matrix(a: Any, b: Any) -> np.ndarray:
    """(N, M) cosine similarities between the rows of `a` (N, D) and `b` (M, D)."""
    return normalise_rows(_rows(a, "cosine_matrix a")) @ normalise_rows(_rows(b, "cosine_matrix b")).T


def rescale(cos: Any) -> Any:
    """Cosine in [-1, 1] -> similarity in [0, 1], as the CAT authors rescale image-image similarity."""
    return (np.asarray(cos) + 1.0) / 2.0


def image_similarity(generated: Any, references: Any, per_image: bool = False) -> float | np.ndarray:
    """Mean raw cosine cos(g, r) over generations g and references r; in [-1, 1], NOT rescaled.

    DreamBooth's DINO score with DINO ViT-S/16 embeddings and its CLIP-I with CLIP image embeddings
    (Ruiz et al. 2023, arXiv 2208.12242). IS is the same average of (cos + 1) / 2, so IS = (this + 1) / 2.
    """
    s = cosine_matrix(generated, references).mean(1)  # (N,)
    return s if per_image else float(s.mean())


def identity_similarity(generated: Any, references: Any, per_image: bool = False) -> float | np.ndarray:
    """IS: mean over generations g and references r of (cos(g, r) + 1) / 2; in [0, 1], higher = more like the concept."""
    s = rescale(cosine_matrix(generated, references)).mean(1)  # (N,)
    return s if per_image else float(s.mean())


def prompt_similarity(texts: Any, generated: Any, per_image: bool = False) -> float | np.ndarray:
    """PS: mean raw cosine between each prompt's text embedding (N, D) or one prompt (1, D) and its generation (N, D).

    With CLIP embeddings this is DreamBooth's CLIP-T (prompt fidelity); in [-1, 1], not rescaled.
    """
    t, g = (
        normalise_rows(_rows(texts, "prompt_similarity texts")),
        normalise_rows(_rows(generated, "prompt_similarity images")),
    )
    if len(t) not in (1, len(g)):
        raise ValueError(
            f"prompt_similarity: {len(t)} text embeddings for {len(g)} images; pass one per image or a single one"
        )
    s = (t * g).sum(1)  # (N,)
    return s if per_image else float(s.mean())


def knowledge_preservation(adapted: Any, base: Any, per_image: bool = False) -> float | np.ndarray:
    """KP: mean (cos(A(p, s), B(p, s)) + 1) / 2 over paired generations of the adapted model A and the base B.

    Pass arrays paired row by row, or mappings key -> embedding (e.g. key = (prompt, seed)) with equal keys.
    """
    if isinstance(adapted, Mapping) or isinstance(base, Mapping):
        if not (isinstance(adapted, Mapping) and isinstance(base, Mapping)) or set(adapted) != set(base):
            only_a = sorted(map(str, set(adapted) - set(base))) if isinstance(base, Mapping) else "?"
            only_b = sorted(map(str, set(base) - set(adapted))) if isinstance(adapted, Mapping) else "?"
            raise ValueError(
                f"knowledge_preservation: unpaired generations; keys only in adapted: {only_a}, only in base: {only_b}. "
                "KP compares each adapted image with the base image of the same prompt and seed: generate both on the same prompts x seeds"
            )
        keys = list(adapted)
        adapted, base = [adapted[k] for k in keys], [base[k] for k in keys]
    a, b = _rows(adapted, "knowledge_preservation adapted"), _rows(base, "knowledge_preservation base")
    if a.shape != b.shape:
        raise ValueError(
            f"knowledge_preservation: unpaired generations, adapted {a.shape} vs base {b.shape}. KP compares each adapted "
            "image with the base image of the same prompt and seed: generate both on the same prompts x seeds"
        )
    s = rescale((normalise_rows(a) * normalise_rows(b)).sum(1))  # (N,)
    return s if per_image else float(s.mean())


def kps(is_score: float, kp_score: float) -> float:
    """KPS: harmonic mean 2 IS KP / (IS + KP) of identity and knowledge preservation; in [0, 1], higher = better."""
    if not (math.isfinite(is_score) and math.isfinite(kp_score)):
        return math.nan
    return 0.0 if is_score + kp_score <= 0 else 2 * is_score * kp_score / (is_score + kp_score)


def pairwise_diversity(generated: Any) -> float:
    """DIV: mean pairwise (1 - cos) among generations of one prompt; 0 = identical images, nan for fewer than 2."""
    k = cosine_matrix(generated, generated)  # (N, N)
    n = len(k)
    return math.nan if n < 2 else float((1 - k)[np.triu_indices(n, 1)].mean())


def vendi_score(generated: Any) -> float:
    """Vendi: exp of the entropy of the eigenvalues of K / n, K = cosine similarity matrix; in [1, n] = effective
    number of distinct images."""
    k = cosine_matrix(generated, generated)  # (N, N)
    lam = np.clip(np.linalg.eigvalsh(k / len(k)), 0, None)  # tiny negative eigenvalues are round-off
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


# ----------------------------------------------------------------------------- oracle scores (toy world)


def attribute_accuracy(read: Sequence[str], expected: str | Sequence[str | None]) -> float:
    """Share of oracle readings equal to the expected attribute (None entries are not checked); nan if none checked."""
    exp = [expected] * len(read) if isinstance(expected, str) else list(expected)
    if len(exp) != len(read):
        raise ValueError(f"attribute_accuracy: {len(read)} readings but {len(exp)} expected values")
    hits = [r == e for r, e in zip(read, exp) if e is not None]
    return float(np.mean(hits)) if hits else math.nan


def colour_entropy(colours: Sequence[str], palette: Sequence[str]) -> float:
    """Entropy of the colour histogram / log(len(palette)); 1 = all colours equally often, 0 = one colour."""
    unknown = sorted(set(colours) - set(palette))
    if unknown:
        raise ValueError(f"colour_entropy: colours {unknown} are not in the palette {list(palette)}")
    if not len(colours):
        return math.nan
    p = np.array([list(colours).count(c) for c in palette], dtype=np.float64) / len(colours)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(palette)))


def concept_share(concepts_read: Sequence[str], concept: str) -> float:
    """Share of generations the oracle reads as the concept; nan for none."""
    return float(np.mean([c == concept for c in concepts_read])) if len(concepts_read) else math.nan


def collapse_rate(concepts_read: Sequence[str], concept: str) -> float:
    """On class-prompt generations: the share that draws the concept itself (a leak); 0 = no collapse."""
    return concept_share(concepts_read, concept)


def identity_rate(concepts_read: Sequence[str], concept: str) -> float:
    """On trigger-prompt generations: the share that draws the concept; 1 = learnt."""
    return concept_share(concepts_read, concept)


# ----------------------------------------------------------------------------- ground-truth preservation
# With an oracle, "the class stays the base model's" can be measured per seed rather than as a set statistic:
# entropy counts a class that drifted to other hues as diverse; these scores do not.


def paired_preservation(adapted: Sequence[Any], base: Sequence[Any]) -> float:
    """Share of seeds whose adapted sample has the same oracle reading (e.g. (colour, shape)) as the base's sample
    from the same seed; 1 = every class sample is the one the base model drew."""
    if len(adapted) != len(base):
        raise ValueError(
            f"paired_preservation: {len(adapted)} adapted readings for {len(base)} base readings; pair them by seed"
        )
    return float(np.mean([a == b for a, b in zip(adapted, base)])) if len(base) else math.nan


def colour_distance(adapted: Sequence[str], base: Sequence[str], palette: Sequence[str]) -> float:
    """Total-variation distance between two colour histograms: 0 = same distribution, 1 = disjoint colours."""
    unknown = sorted((set(adapted) | set(base)) - set(palette))
    if unknown:
        raise ValueError(f"colour_distance: colours {unknown} are not in the palette {list(palette)}")
    if not len(adapted) or not len(base):
        return math.nan
    p = np.array([list(adapted).count(c) for c in palette], dtype=np.float64) / len(adapted)
    q = np.array([list(base).count(c) for c in palette], dtype=np.float64) / len(base)
    return float(0.5 * np.abs(p - q).sum())


def valid_rate(
    shapes_read: Sequence[str], shape_confidence: Sequence[float], class_word: str, threshold: float = 0.9
) -> float:
    """Share of class samples the oracle reads as `class_word` with probability >= `threshold` (broken samples fail)."""
    if len(shapes_read) != len(shape_confidence):
        raise ValueError(f"valid_rate: {len(shapes_read)} shapes for {len(shape_confidence)} confidences")
    ok = [s == class_word and p >= threshold for s, p in zip(shapes_read, shape_confidence)]
    return float(np.mean(ok)) if ok else math.nan


# ----------------------------------------------------------------------------- confidence intervals

# Student t 0.975 quantiles for 1..30 degrees of freedom (scipy is not a dependency)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """0.975 quantile of Student's t; beyond the table, the Cornish-Fisher expansion (error < 1e-5)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); nans are dropped; half-width nan for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
