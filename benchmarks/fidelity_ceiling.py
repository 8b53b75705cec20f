"""The most fidelity any adapter can reach: each concept's fresh photos held to its training photos, as drawn and after a
round trip through the toy pipeline's autoencoder (an adapter only moves latents, so what the autoencoder cannot draw
back, no adapter can draw).

    python benchmarks/fidelity_ceiling.py [--concepts bronze_star,circle_on_navy] [--n 40]

Prints one row per concept and state (drawn / through the autoencoder): fidelity and each attribute's rate, the
trigger colour distance, and the mean backdrop and object colour. The references are the photos `export_concept`
writes (seed 0); the held photos use another seed, so they vary as a new photo of the concept would.
"""

from __future__ import annotations

import argparse

import numpy as np


def hold_to_photos(images, photos, oracle, class_shape: str) -> dict[str, float]:
    """Fidelity's attribute rates for `images` (PIL) held to the concept's `photos`, as `catlab eval` scores trigger
    samples, with the mean backdrop and object colour beside them."""
    import pandas as pd

    from catlab.evaluation.fidelity import per_seed_fidelity, score_fidelity
    from catlab.toyworld.attributes import read_attributes
    from catlab.toyworld.oracle import read_images

    df = pd.DataFrame({"kind": "trigger", "oracle_shape": read_images(oracle, images).shape})
    rates = per_seed_fidelity(score_fidelity(df, images, photos, class_shape))
    attrs = [read_attributes(im) for im in images]
    objects = [a.object_pixels.mean(axis=0) for a in attrs if len(a.object_pixels)]
    return {
        "fidelity": rates["fidelity"],
        "colour": rates["colour_fidelity"],
        "setting": rates["setting_fidelity"],
        "size": rates["size_fidelity"],
        "position": rates["position_fidelity"],
        "shape": rates["shape_fidelity"],
        "valid": rates["trigger_valid_rate"],
        "colour distance": rates["trigger_colour_distance"],
        "backdrop RGB": tuple(int(v) for v in np.mean([a.backdrop for a in attrs], axis=0)),
        "object RGB": tuple(int(v) for v in np.mean(objects, axis=0)) if objects else None,
    }


def ceiling_rows(vae, oracle, names: list[str], n: int) -> list[dict]:
    """For each concept: fidelity of `n` fresh photos as drawn and through `vae`, held to the exported photos (seed 0)."""
    import torch
    from PIL import Image

    from catlab.toyworld.open_colours import round_trip
    from catlab.toyworld.oracle import images_to_tensor
    from catlab.toyworld.world import concept_images, toy_concept

    rows = []
    for name in names:
        references = concept_images(name, seed=0)[0]
        photos, _ = concept_images(name, seed=4321, n=n)
        with torch.no_grad():
            trip = round_trip(vae, images_to_tensor(photos))  # (n, 3, 32, 32) in [-1, 1]
        trip = ((trip + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (n, 32, 32, 3)
        for state, images in (("drawn", photos), ("through the autoencoder", [Image.fromarray(t) for t in trip])):
            rows.append(
                {
                    "concept": name,
                    "photos": state,
                    **hold_to_photos(images, references, oracle, toy_concept(name).class_word),
                }
            )
    return rows


def concept_names(arg: str | None) -> list[str]:
    """--concepts as a list, every toy concept (the held-out ones too) by default; an unknown name stops with the known
    ones."""
    from catlab.toyworld.world import CONCEPTS, HELD_OUT_CONCEPTS

    known = [*CONCEPTS, *HELD_OUT_CONCEPTS]
    names = arg.split(",") if arg else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown toy concept(s) {unknown}; choose from {sorted(known)}")
    return names


def print_rows(rows: list[dict]) -> None:
    import pandas as pd

    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(pd.DataFrame(rows).round(2).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default=None, help="comma-separated toy concepts (default: every one)")
    ap.add_argument("--n", type=int, default=40, help="fresh photos per concept (default 40)")
    ap.add_argument(
        "--assets", default=None, help="toy-world asset folder (default: the shipped one, or $CATLAB_TOYWORLD_DIR)"
    )
    args = ap.parse_args()
    from catlab.models import load_base
    from catlab.toyworld.assets import load_oracle, toyworld_path

    names = concept_names(args.concepts)
    vae = load_base(str(toyworld_path("pipeline", args.assets)) if args.assets else "toyworld").vae.eval()
    print_rows(ceiling_rows(vae, load_oracle(args.assets), names, args.n))


if __name__ == "__main__":
    main()
