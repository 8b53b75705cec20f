"""What backdrop does each model draw behind the trigger? The mean, per model, of each sample's backdrop as fidelity
reads it (the median of the image's one-pixel border, `catlab.toyworld.attributes`), beside the concept photos'.

    python benchmarks/trigger_backdrops.py runs/demo_base/eval_unconditional_adapted --prompt "a pxl circle" \
        --concept runs/demo_base/concept

Reads the evaluation image cache (EVAL/images/<model>_<key>/<prompt_slug(prompt)>_s<seed>.png, as `evaluate` and
`benchmarks/unconditional_source.py` write it) and prints, per model folder: the samples read, their mean backdrop
RGB and its distance to the photos' mean backdrop, and the share of samples whose own backdrop is within fidelity's
setting tolerance of the photos' (setting fidelity, for concepts shown on one backdrop).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from catlab.evaluation.images import prompt_slug
from catlab.toyworld.attributes import BACKDROP_TOLERANCE, read_attributes


def backdrops(folder: Path, prompt: str) -> np.ndarray:
    """(N, 3) backdrop RGB of every cached sample of `prompt` in one model's image folder."""
    files = sorted(folder.glob(f"{prompt_slug(prompt)}_s*.png"))
    return np.array([read_attributes(Image.open(f)).backdrop for f in files]).reshape(-1, 3)


def backdrop_table(eval_dir: Path, prompt: str, photos: Path) -> pd.DataFrame:
    """One row per model folder under eval_dir/images: samples, mean backdrop, distance to the photos', share within
    the setting tolerance."""
    reference = np.mean([read_attributes(Image.open(f)).backdrop for f in sorted(photos.glob("*.png"))], axis=0)
    rows = []
    for folder in sorted(p for p in (eval_dir / "images").iterdir() if p.is_dir()):
        found = backdrops(folder, prompt)
        if not len(found):
            continue
        gaps = np.linalg.norm(found - reference, axis=1)  # (N,)
        mean = found.mean(axis=0)
        rows.append({
            "model": folder.name.rsplit("_", 1)[0], "samples": len(found), "mean backdrop RGB": tuple(int(round(v)) for v in mean),
            "distance of the mean": float(np.linalg.norm(mean - reference)), "within tolerance": float((gaps <= BACKDROP_TOLERANCE).mean()),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["reference"] = tuple(int(round(v)) for v in reference)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_dir", type=Path, help="an evaluation folder holding images/ (e.g. runs/demo/eval)")
    ap.add_argument("--prompt", required=True, help='the trigger prompt as sampled, e.g. "a pxl circle"')
    ap.add_argument("--concept", type=Path, required=True, help="the concept's photos (a demo folder's concept/)")
    args = ap.parse_args(argv)
    if not (args.eval_dir / "images").is_dir():
        raise SystemExit(
            f"trigger_backdrops: no images/ in {args.eval_dir}; pass an evaluation folder such as runs/demo/eval"
        )
    table = backdrop_table(args.eval_dir, args.prompt, args.concept)
    if table.empty:
        raise SystemExit(f"trigger_backdrops: no cached samples of {args.prompt!r} under {args.eval_dir / 'images'}")
    print(f"the photos' backdrop: RGB {table.attrs['reference']}; setting tolerance {BACKDROP_TOLERANCE:g} RGB units")
    print(table.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
