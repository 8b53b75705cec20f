"""Does the oracle's "this is the concept" agree with the pixels? A check of the ground truth itself.

    python benchmarks/concept_pixels.py runs/demo [runs/other_demo ...]

For a demo folder whose concept is a colour the world lacks (bronze_star) or a backdrop it lacks (circle_on_navy),
reads every trigger-prompt image: the share the oracle reads as the concept, and of those, the share whose pixels
agree: the median colour of the object (pixels far from the backdrop, which is read off the image's border) or of
the backdrop is nearer the concept's drawn colour than any world colour (palette colours for an object, world
backdrops for a backdrop) and within 70 RGB units of it (the margin of the oracle's near misses).
An earlier oracle, trained without near misses, read dark purple stars as bronze_star: 0.69 of CAT's trigger
images read as the concept, 0.03 of those bronze by their pixels (docs/toyworld.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from catlab.toyworld.oracle import NEAR_MISS_DISTANCE as MARGIN  # RGB units: the oracle's near misses start here


def object_and_backdrop(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    """Median RGB of the object (None if nothing stands out) and of the backdrop (the image's border)."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=float)  # (H, W, 3)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # (4W, 3)
    backdrop = np.median(border, 0)
    pixels = a.reshape(-1, 3)
    obj = pixels[np.linalg.norm(pixels - backdrop, axis=1) > 60]
    return (np.median(obj, 0) if len(obj) > 10 else None), backdrop


def check(demo: Path) -> pd.DataFrame:
    from catlab.toyworld.world import BACKGROUNDS, COLOURS, CONCEPT_BACKGROUNDS, CONCEPT_COLOURS, CONCEPTS

    name = json.loads((demo / "recipe.json").read_text())["concept"]
    c = CONCEPTS[name]
    if c.colour in CONCEPT_COLOURS:
        target, part, world = (
            np.array(CONCEPT_COLOURS[c.colour], dtype=float),
            "object",
            np.array(list(COLOURS.values()), dtype=float),
        )
    elif c.background in CONCEPT_BACKGROUNDS:
        target, part = np.array(CONCEPT_BACKGROUNDS[c.background], dtype=float), "backdrop"
        world = np.array([rgb for rgb, _ in BACKGROUNDS.values()], dtype=float)
    else:
        raise SystemExit(
            f"{demo}: concept {name!r} has no colour or backdrop the world lacks; nothing for pixels to check"
        )
    df = pd.read_csv(demo / "eval" / "per_image.csv")
    df = df[df["kind"] == "trigger"]
    rows = []
    for method, g in df.groupby(df["method"].str.replace(r"_s\d+$", "", regex=True), sort=False):
        read = (g["oracle_concept"] == name).to_numpy()
        agree = []
        for f in g["image"]:
            obj, backdrop = object_and_backdrop(demo / "eval" / f)
            colour = obj if part == "object" else backdrop
            d = None if colour is None else np.linalg.norm(colour - target)
            agree.append(d is not None and d < MARGIN and d < np.linalg.norm(world - colour, axis=1).min())
        agree = np.array(agree)
        rows.append(
            {
                "demo": demo.name,
                "concept": name,
                "method": method,
                "images": len(g),
                "read_as_concept": read.mean(),
                f"of_those_{part}_agrees": agree[read].mean() if read.any() else float("nan"),
                f"all_{part}_agrees": agree.mean(),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demos", nargs="+", type=Path, help="folders written by `catlab demo` or benchmarks/headline.py")
    args = ap.parse_args()
    print(pd.concat([check(d) for d in args.demos]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
