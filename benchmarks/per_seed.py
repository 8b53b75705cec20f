"""Per training seed, what a demo folder's means hide: each adapter's scores, and where its class samples' colours went.

    python benchmarks/per_seed.py runs/headline8/huge_circle runs/heldout8/huge_circle [--method cat] [--trigger-seeds 24]

For each demo folder (from `catlab demo` or benchmarks/headline.py) it prints, per adapter, the oracle's identity /
collapse / paired preservation / colour distance (from eval/summary.csv), then, over all the folders' adapters of
`--method`, the commonest colour changes of class samples against the base model's sample from the same seed
(from eval/per_image.csv): a drift with a direction (e.g. towards the opposite hue) shows as a few large counts.
`--trigger-seeds N` also scores each method's identity on the trigger samples of the first N sampling seeds only,
beside all of them: what a smaller trigger set would have measured on the same images.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

SCORES = ("identity_acc_mean", "collapse_rate_mean", "paired_preservation_mean", "colour_distance_mean")
FIDELITY = "fidelity_mean"  # printed last when the evaluation scored it (toy concepts with photos)
METHODS = ("lora", "dreambooth", "cat")


def colour_changes(per_image, method: str) -> Counter:
    """Counts of "base colour -> adapter colour" over the class samples of every `method` adapter (e.g. cat_s0)."""
    cls = per_image[per_image.kind == "class"]
    base = cls[cls.method == "base"].set_index("seed").oracle_colour
    changes = Counter()
    for name in sorted(m for m in cls.method.unique() if m.startswith(f"{method}_s")):
        adapted = cls[cls.method == name].set_index("seed").oracle_colour
        for seed, colour in adapted.items():
            if colour != base[seed]:
                changes[f"{base[seed]} -> {colour}"] += 1
    return changes


def identity_on_first_seeds(per_image, method: str, n: int) -> tuple[float, float]:
    """Oracle identity of the `method` adapters (mean over adapters) on all trigger samples, and on the first n seeds'."""
    trig = per_image[(per_image.kind == "trigger") & per_image.method.str.startswith(f"{method}_s")]
    first = trig[trig.seed.isin(sorted(trig.seed.unique())[:n])]
    return float(trig.groupby("method").identity_ok.mean().mean()), float(
        first.groupby("method").identity_ok.mean().mean()
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "demos", nargs="+", type=Path, help="demo folders, each with eval/summary.csv and eval/per_image.csv"
    )
    ap.add_argument("--method", default="cat", choices=METHODS, help="whose colour changes to count")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument(
        "--eval",
        default="eval",
        metavar="FOLDER",
        help="the evaluation folder inside each demo folder (default: eval; e.g. eval_unconditional_adapted_g3)",
    )
    ap.add_argument(
        "--trigger-seeds", type=int, default=None, metavar="N", help="also score identity on the first N trigger seeds"
    )
    args = ap.parse_args()
    import pandas as pd

    total = Counter()
    for demo in args.demos:
        summary, per_image = demo / args.eval / "summary.csv", demo / args.eval / "per_image.csv"
        if not (summary.is_file() and per_image.is_file()):
            ap.error(
                f"{demo}: no {args.eval}/summary.csv and {args.eval}/per_image.csv; run `catlab demo --out {demo}` first"
            )
        s = pd.read_csv(summary).set_index("method")
        scores = SCORES + ((FIDELITY,) if FIDELITY in s else ())
        print(
            f"{demo}/{args.eval}  (identity / collapse / paired / colour distance{' / fidelity' if FIDELITY in s else ''})"
        )
        for method in METHODS:
            rows = [m for m in s.index if m.startswith(f"{method}_s")]
            print(
                f"  {method:<12}"
                + ", ".join(
                    f"{m.rsplit('_s', 1)[1]}: " + " / ".join(f"{s.loc[m, c]:.3f}" for c in scores) for m in rows
                )
            )
        images = pd.read_csv(per_image)
        if args.trigger_seeds:
            print(
                f"  identity on all trigger samples -> on the first {args.trigger_seeds} seeds: "
                + ", ".join(
                    f"{method} {all_:.2f} -> {first:.2f}"
                    for method in METHODS
                    for all_, first in [identity_on_first_seeds(images, method, args.trigger_seeds)]
                )
            )
        total += colour_changes(images, args.method)
    print(
        f"\n{args.method}: commonest class-sample colour changes against the base model on the same seed, over all folders:"
    )
    for change, n in total.most_common(args.top):
        print(f"  {change:<22} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
