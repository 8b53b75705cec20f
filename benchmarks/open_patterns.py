"""Can the toy world's autoencoder learn to draw composite concepts? The open-colours stage again, on a copy of
the toy-world asset folder (the shipped one, or $CATLAB_TOYWORLD_DIR), with a share of its open-colour objects
two-coloured (`open_colour_pattern_share`), then the fidelity ceiling of every concept
(benchmarks/fidelity_ceiling.py) with the autoencoder before and after.

    python benchmarks/open_patterns.py --out runs/open_patterns [--share 0.5] [--steps 4000]

--out receives a full asset folder (pipeline/, clip/, oracle.safetensors; the UNet, CLIP and oracle are copied),
usable as CATLAB_TOYWORLD_DIR; its work files go to <out>-work, so an interrupted run resumes. The stage anchors
the latents of world images, so the UNet keeps its meaning; the world's reconstruction error and how far its
latents moved are printed beside the ceiling.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fidelity_ceiling import ceiling_rows, concept_names, print_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="asset folder to write (a copy of the shipped one, new autoencoder)")
    ap.add_argument("--share", type=float, default=0.5, help="share of open-colour objects drawn two-coloured")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the stage's own, 4,000)")
    ap.add_argument("--concepts", default=None, help="comma-separated toy concepts to hold (default: every one)")
    ap.add_argument("--n", type=int, default=40, help="fresh photos per concept (default 40)")
    args = ap.parse_args()
    if not 0 < args.share <= 1:
        raise SystemExit(f"--share {args.share}: a share of the open-colour objects, in (0, 1]")

    from diffusers import AutoencoderKL

    from catlab.toyworld.assets import asset_root, load_oracle
    from catlab.toyworld.pretrain import PretrainConfig, pretrain

    names = concept_names(args.concepts)
    source, out = asset_root(), Path(args.out)
    cfg = PretrainConfig(stages=("open_colours",), open_colour_pattern_share=args.share)
    if args.steps:
        cfg.open_colour_steps = args.steps
    recipe = out / "recipe.json"
    done = recipe.exists() and any(
        u.get("config", {}).get("open_colour_pattern_share") == args.share
        and u["config"]["open_colour_steps"] == cfg.open_colour_steps
        for u in json.loads(recipe.read_text()).get("updates", [])
    )
    if not done:
        if out.exists() and not (out.with_name(out.name + "-work") / "open_colours.ckpt").exists():
            raise SystemExit(f"{out} exists and is not a run of this script to resume; pick another --out")
        if not out.exists():
            shutil.copytree(source, out, ignore=shutil.ignore_patterns("_work"))
        pretrain(out, cfg)
    update = json.loads(recipe.read_text())["updates"][-1]
    print("open colours with patterns:", json.dumps(update["open_colours"]))

    oracle = load_oracle(source)
    rows = []
    for label, folder in (("before", source), (f"patterns {args.share:g}", out)):
        vae = AutoencoderKL.from_pretrained(Path(folder) / "pipeline" / "vae").eval()
        rows += [
            {"autoencoder": label, **r} for r in ceiling_rows(vae, oracle, names, args.n) if r["photos"] != "drawn"
        ]
    print_rows(rows)


if __name__ == "__main__":
    main()
