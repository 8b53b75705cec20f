"""Does the oracle know every toy concept, and only the concept? Reads drawn world images and concept photos.

    python benchmarks/oracle_concepts.py [--assets DIR]

Prints: shape / colour accuracy and the share read as "none" on 400 world images; how many large world circles
(radius > 0.36) it reads as huge_circle; for each concept, the share of 20 concept photos read as that concept;
the reading of one drawn blue circle per radius around the world's largest size (0.40); the share of 200 near
misses (world shapes in open colours at least 70 RGB units from every concept colour) read as some concept; and,
per concept, the share of its photos read as the concept after a round trip through the pipeline's autoencoder
(encode -> decode: the best any adapter can draw) with the mean pixel error of that trip and the median colour at
the centre (the object) and in the corner (the backdrop) before and after it. Used for
docs/toyworld.md (the oracle after huge_circle was added; the open-colour autoencoder and near-miss oracle).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--assets", default=None, help="toy-world asset folder (default: the shipped one, or $CATLAB_TOYWORLD_DIR)"
    )
    args = ap.parse_args()
    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.open_colours import round_trip
    from catlab.toyworld.oracle import images_to_tensor, near_miss_spec, read_images
    from catlab.toyworld.world import CONCEPTS, ShapeSpec, concept_images, draw_shape, make_world_dataset

    oracle = load_oracle(args.assets)
    images, specs = make_world_dataset(400, seed=12345)
    r = read_images(oracle, images)
    print(
        f"world (400): shape {np.mean([a == s.shape for a, s in zip(r.shape, specs)]):.2f}  "
        f"colour {np.mean([a == s.colour for a, s in zip(r.colour, specs)]):.2f}  "
        f"read as no concept {np.mean([c == 'none' for c in r.concept]):.2f}"
    )
    large = [i for i, s in enumerate(specs) if s.shape == "circle" and s.radius > 0.36]
    print(
        f"large world circles read as huge_circle: {sum(r.concept[i] == 'huge_circle' for i in large)} of {len(large)}"
    )
    for name in CONCEPTS:
        photos, _ = concept_images(name, seed=99, n=20)
        print(
            f"{name}: {sum(c == name for c in read_images(oracle, photos).concept)} of 20 concept photos read as the concept"
        )
    for radius in (0.38, 0.40, 0.42, 0.44):
        reading = read_images(
            oracle, [draw_shape(ShapeSpec("circle", "blue", "light", radius, 0.5, 0.5, 0.0))]
        ).concept[0]
        print(f"a drawn blue circle of radius {radius:.2f} reads: {reading}")
    rng = np.random.default_rng(2024)
    misses = [draw_shape(near_miss_spec(rng)) for _ in range(200)]
    print(
        "near misses (200 open-colour world shapes): read as some concept "
        f"{np.mean([c != 'none' for c in read_images(oracle, misses).concept]):.2f}"
    )
    vae = load_base(f"{args.assets}/pipeline" if args.assets else "toyworld").vae.eval()
    for name in CONCEPTS:
        photos, _ = concept_images(name, seed=99, n=20)
        x = images_to_tensor(photos)
        y = round_trip(vae, x)  # (20, 3, 32, 32)
        trip = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        drawn = np.stack([np.asarray(p.convert("RGB")) for p in photos])  # (20, 32, 32, 3)
        centre, corner = (
            (lambda a: np.median(a[:, 15:17, 15:17].reshape(-1, 3), 0).astype(int).tolist()),
            (lambda a: np.median(a[:, :2, :2].reshape(-1, 3), 0).astype(int).tolist()),
        )
        print(
            f"{name} through the autoencoder: {sum(c == name for c in read_images(oracle, trip).concept)} of 20 read as the concept, "
            f"mean pixel error {float((y - x).abs().mean() * 127.5):.1f}; median RGB at the centre {tuple(centre(drawn))} -> "
            f"{tuple(centre(trip))}, in the corner {tuple(corner(drawn))} -> {tuple(corner(trip))}"
        )


if __name__ == "__main__":
    main()
