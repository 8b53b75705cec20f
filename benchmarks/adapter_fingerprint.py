"""Does this code (or this machine) train the same adapter as another? One demo training run, then a fingerprint of
its weights: the SHA-256 of every LoRA tensor's bytes, in key order.

    python benchmarks/adapter_fingerprint.py --out /tmp/fp_new
    git worktree add /tmp/old b77be18 && PYTHONPATH=/tmp/old python benchmarks/adapter_fingerprint.py --out /tmp/fp_old

The same fingerprint means bit-identical weights. The second line trains with an older commit's catlab (the script
needs only `DemoRecipe.train_config` and `catlab.training.loop.train`, which both have); on another machine the first
line says whether that machine trains what this one does. One thread, as the demo's runs.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def fingerprint(weights: Path) -> str:
    """SHA-256 over each tensor's name and bytes, keys sorted."""
    from safetensors.torch import load_file

    tensors = load_file(weights)
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the run")
    ap.add_argument("--method", default="lora", help="a demo method key: lora, dreambooth, cat, paper_cat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concept", default="circle_on_navy")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"adapter_fingerprint: {args.out} exists; pass a new --out")
    import torch

    import catlab
    from catlab.config import ConceptConfig
    from catlab.demo.recipe import DemoRecipe
    from catlab.toyworld.world import CONCEPTS, export_concept
    from catlab.training.loop import train

    torch.set_num_threads(1)
    c = CONCEPTS[args.concept]
    export_concept(args.concept, args.out / "concept")
    cfg = DemoRecipe().train_config(
        args.method, args.seed, ConceptConfig(str(args.out / "concept"), c.trigger, c.class_word), args.out
    )
    result = train(cfg, progress=False)
    print(f"catlab from {Path(catlab.__file__).parent}")
    print(
        f"{args.method} seed {args.seed} on {args.concept}: {fingerprint(result.adapter_dir / 'pytorch_lora_weights.safetensors')}"
    )


if __name__ == "__main__":
    main()
