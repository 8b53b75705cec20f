"""Can the oracle be as strict as a person? Train it with close misses and hold each oracle to the hand labels.

    python benchmarks/oracle_close_misses.py --out runs/oracle_close_misses --shares 0.15 --distances 45
    python benchmarks/oracle_close_misses.py --out runs/oracle_close_misses --shares 0.1,0.2 --distances 40,55

A close miss is a concept's own drawing with its new colour (bronze) or its backdrop (navy) moved some distance
away (`catlab.toyworld.oracle.close_miss_spec`), labelled "not the concept". The shipped oracle never saw one: its
"not the concept" examples are at least 70 RGB units off (NEAR_MISS_DISTANCE). Each setting trains a fresh oracle
with the toy world's oracle recipe (same seed and steps; `PretrainConfig.oracle_close_miss_share` and
`oracle_close_miss_distance`) into --out, and the shipped oracle is measured beside it:

- per hand-label folder: how often its identity says "the concept" where neither labeller did (more generous) and
  the reverse (stricter), against "a yes from either labeller" (benchmarks/hand_labels.py);
- that it still knows what it must: each concept's fresh photos read as the concept, drawn and after a round trip
  through the pipeline's autoencoder (the best an adapter can draw), and world images read as no concept;
- close misses drawn with another seed than training's, read as some concept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

LABELS = ("tests/data/hand_labels", "tests/data/hand_labels_bronze_star", "tests/data/hand_labels_circle_on_navy_2")


def train_one(share: float, distance: float, steps: int | None, out: Path, solid_drift: bool = True) -> Path:
    """An oracle trained with the toy world's recipe and close misses; its safetensors path (reused when present)."""
    from safetensors.torch import save_file

    from catlab.files import replace_atomically
    from catlab.toyworld.pretrain import PretrainConfig, train_oracle

    name = f"oracle_share{share:g}_distance{distance:g}" + ("" if solid_drift else "_solid")
    path = out / name / "oracle.safetensors"
    if path.exists():
        return path
    cfg = PretrainConfig(
        oracle_close_miss_share=share, oracle_close_miss_distance=distance, oracle_solid_colour_drift=solid_drift
    )
    if steps:
        cfg.oracle_steps = steps
    oracle = train_oracle(cfg, out)
    return replace_atomically(path, lambda tmp: save_file(oracle.state_dict(), str(tmp)))


def measure(oracle, vae, distance: float, solid_drift: bool = True) -> dict:
    """What one oracle reads: hand-label disagreements, concept photos, world images, close misses."""
    from hand_labels import agreement, score_labels

    from catlab.toyworld.open_colours import round_trip
    from catlab.toyworld.oracle import close_miss_spec, images_to_tensor, read_images
    from catlab.toyworld.world import CONCEPTS, concept_images, draw_shape, make_world_dataset

    row = {}
    for folder in LABELS:
        a = agreement(score_labels(Path(folder), oracle), scores=("identity_ok",), against="either").iloc[0]
        row[f"{Path(folder).name}: more generous / stricter"] = f"{a['more_generous']} / {a['stricter']} of {a['n']}"
    for name in CONCEPTS:
        photos, _ = concept_images(name, seed=99, n=20)
        trip = round_trip(vae, images_to_tensor(photos))  # (20, 3, 32, 32) in [-1, 1]
        trip = ((trip + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        drawn_ok = sum(c == name for c in read_images(oracle, photos).concept)
        trip_ok = sum(c == name for c in read_images(oracle, trip).concept)
        row[f"{name} photos: drawn / through the autoencoder"] = f"{drawn_ok} / {trip_ok} of 20"
    images, _ = make_world_dataset(400, seed=12345)
    row["world images read as no concept"] = (
        f"{np.mean([c == 'none' for c in read_images(oracle, images).concept]):.2f}"
    )
    rng = np.random.default_rng(2025)
    misses = [draw_shape(close_miss_spec(rng, distance, solid_drift)) for _ in range(200)]
    row[f"close misses ({distance:g}-{distance + 50:g} RGB units) read as a concept"] = (
        f"{np.mean([c != 'none' for c in read_images(oracle, misses).concept]):.2f}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the trained oracles go (reused when present)")
    ap.add_argument("--shares", default="0.15", help="close-miss shares of each batch, comma-separated")
    ap.add_argument("--distances", default="45", help="close misses' nearest distance in RGB units, comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="oracle training steps (default: the toy world's)")
    ap.add_argument(
        "--solid",
        action="store_true",
        help="solid concepts keep their own colour in the oracle's training (oracle_solid_colour_drift: false)",
    )
    args = ap.parse_args()
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))  # hand_labels.py, beside this script

    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle

    vae = load_base("toyworld").vae.eval()
    distances = [float(d) for d in args.distances.split(",")]
    columns = {"shipped oracle": measure(load_oracle(), vae, distances[0], not args.solid)}
    for share in (float(s) for s in args.shares.split(",")):
        for distance in distances:
            path = train_one(share, distance, args.steps, args.out, solid_drift=not args.solid)
            name = f"share {share:g}, from {distance:g}" + (", solid colours kept" if args.solid else "")
            columns[name] = measure(load_oracle(path), vae, distance, not args.solid)
    pd.set_option("display.width", 250)
    print(pd.DataFrame(columns).to_string())


if __name__ == "__main__":
    main()
