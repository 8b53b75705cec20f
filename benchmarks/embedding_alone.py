"""Where does a pivotally tuned adapter keep the concept: in the trigger's embedding, or in the UNet's LoRA?

For each adapter (trained with `trigger_embedding_lr > 0`) draws the trigger prompt three ways from the same seeds:
the whole adapter, the trigger's embedding alone (the UNet's LoRA switched off: the base UNet reads the trained
trigger), and the LoRA alone (the trigger's embedding switched off). Each sample is held to the concept's photos
attribute by attribute (catlab.toyworld.attributes, as fidelity does), and the mean backdrop and object colour are
printed beside the photos'.

    python benchmarks/embedding_alone.py --concept runs/navy_s0/concept --prompt "a pxl circle" \
        runs/navy_s0/runs/SOME_VARIANT_seed0/adapter runs/navy_s0/runs/OTHER_VARIANT_seed0/adapter
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def _judge(images, look) -> dict[str, float]:
    from catlab.toyworld.attributes import judge_sample, read_attributes

    verdicts = [judge_sample(im, look) for im in images]
    reads = [read_attributes(im) for im in images]
    objects = [np.median(r.object_pixels, axis=0) for r in reads if len(r.object_pixels)]
    return {
        "faithful": float(np.mean([v.faithful for v in verdicts])),
        "colour_ok": float(np.mean([v.colour_ok for v in verdicts])),
        "setting_ok": float(np.mean([bool(v.backdrop_ok) for v in verdicts])) if look.backdrop is not None else np.nan,
        "size_ok": float(np.mean([v.size_ok for v in verdicts])),
        "position_ok": float(np.mean([bool(v.position_ok) for v in verdicts])) if look.position is not None else np.nan,
        "backdrop": np.mean([r.backdrop for r in reads], axis=0).round(),
        "object": np.mean(objects, axis=0).round() if objects else np.full(3, np.nan),
    }


def draw_three_ways(pipe, prompt: str, seeds: list[int]) -> dict[str, list]:
    """The prompt from each seed with the whole adapter, the trigger's embedding alone (the UNet's LoRA off) and the
    LoRA alone (the trigger's embedding off: its base row); the pipeline is left as it was."""
    from catlab.models import adapters_disabled
    from catlab.models.trigger_embedding import trigger_embedding_of
    from catlab.sampling.sampler import generate

    emb = trigger_embedding_of(pipe.text_encoder)
    rows = {"whole adapter": generate(pipe, [prompt], seeds, progress=False)[0]}
    with adapters_disabled(pipe.unet):  # the base UNet, the trained trigger
        rows["embedding alone"] = generate(pipe, [prompt], seeds, progress=False)[0]
    active, emb.active = emb.active, []
    try:
        rows["LoRA alone"] = generate(pipe, [prompt], seeds, progress=False)[0]
    finally:
        emb.active = active
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="+", type=Path, help="adapter folders (each with trigger_embeddings.safetensors)")
    ap.add_argument("--concept", type=Path, required=True, help="the concept's folder of photos")
    ap.add_argument("--prompt", required=True, help='the trigger prompt, e.g. "a pxl circle"')
    ap.add_argument("--seeds", type=int, default=24, help="sampling seeds 0..N-1 (default 24)")
    ap.add_argument("--base", default="toyworld")
    args = ap.parse_args(argv)

    from catlab.models import load_base, load_lora
    from catlab.models.trigger_embedding import TRIGGER_EMBEDDING_NAME
    from catlab.toyworld.attributes import learn_look, read_attributes

    photos = [Image.open(p).convert("RGB") for p in sorted(args.concept.glob("*.png"))]
    if not photos:
        raise SystemExit(f"--concept {args.concept}: no .png photos there")
    look = learn_look(photos)
    reads = [read_attributes(p) for p in photos]
    print(
        f"photos ({len(photos)}): backdrop {np.mean([r.backdrop for r in reads], axis=0).round()}, "
        f"object {np.mean([np.median(r.object_pixels, axis=0) for r in reads], axis=0).round()}"
    )
    seeds = list(range(args.seeds))
    for adapter in args.adapters:
        if not (adapter / TRIGGER_EMBEDDING_NAME).exists():
            raise SystemExit(f"{adapter}: no {TRIGGER_EMBEDDING_NAME}: it was trained without trigger_embedding_lr")
        pipe = load_base(args.base)
        load_lora(pipe, adapter, "concept")
        rows = draw_three_ways(pipe, args.prompt, seeds)
        print(f"\n{adapter}")
        for name, images in rows.items():
            j = _judge(images, look)
            print(
                f"  {name:16s} fidelity {j['faithful']:.2f}  colour {j['colour_ok']:.2f}  setting {j['setting_ok']:.2f}"
                f"  size {j['size_ok']:.2f}  position {j['position_ok']:.2f}  backdrop {j['backdrop']}"
                f"  object {j['object']}"
            )


if __name__ == "__main__":
    main()
