"""Does the oracle know every toy concept, and only the concept? Reads drawn world images and concept photos.

    python benchmarks/oracle_concepts.py [--assets DIR]

Prints: shape / colour accuracy and the share read as "none" on 400 world images; how many large world circles
(radius > 0.36) it reads as huge_circle; for each concept, the share of 20 concept photos read as that concept;
and the reading of one drawn blue circle per radius around the world's largest size (0.40). Used for
docs/toyworld.md (the oracle after huge_circle was added).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=None, help="toy-world asset folder (default: the shipped one, or $CATLAB_TOYWORLD_DIR)")
    args = ap.parse_args()
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.oracle import read_images
    from catlab.toyworld.world import CONCEPTS, ShapeSpec, concept_images, draw_shape, make_world_dataset

    oracle = load_oracle(args.assets)
    images, specs = make_world_dataset(400, seed=12345)
    r = read_images(oracle, images)
    print(f"world (400): shape {np.mean([a == s.shape for a, s in zip(r.shape, specs)]):.2f}  "
          f"colour {np.mean([a == s.colour for a, s in zip(r.colour, specs)]):.2f}  read as no concept {np.mean([c == 'none' for c in r.concept]):.2f}")
    large = [i for i, s in enumerate(specs) if s.shape == "circle" and s.radius > 0.36]
    print(f"large world circles read as huge_circle: {sum(r.concept[i] == 'huge_circle' for i in large)} of {len(large)}")
    for name in CONCEPTS:
        photos, _ = concept_images(name, seed=99, n=20)
        print(f"{name}: {sum(c == name for c in read_images(oracle, photos).concept)} of 20 concept photos read as the concept")
    for radius in (0.38, 0.40, 0.42, 0.44):
        reading = read_images(oracle, [draw_shape(ShapeSpec("circle", "blue", "light", radius, 0.5, 0.5, 0.0))]).concept[0]
        print(f"a drawn blue circle of radius {radius:.2f} reads: {reading}")


if __name__ == "__main__":
    main()
