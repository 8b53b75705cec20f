"""Which of an adapter's layers draw the concept, and which move the class? Switch one family of LoRA layers off.

    python benchmarks/unconditional_source.py runs/corner_s0 --new corner_square --sources adapted --variant ...
    python benchmarks/layer_switch_off.py runs/corner_s0 --setting v_target_modulesto_q+..._trigger_embedding_lr0p005

For each training seed of a folder written by `benchmarks/unconditional_source.py` or `catlab demo`, the setting's
adapter (`runs/SETTING_seedN/adapter`) is scored by the demo's protocol (its prompts, seeds and the toy oracle) whole
and then with the LoRA of one family of layers switched off (peft's per-layer switch; the trigger's trained
embedding stays on): self-attention (attn1), cross-attention (attn2), the ResNet convolutions (conv1, conv2) and
the feed-forward layers (ff.net). A family whose removal brings the class back (paired preservation up, colour
distance down) while the concept stays (fidelity) is where the class drift lives and the concept does not.
Prints mean ± std over training seeds; images are cached under FOLDER/eval_layer_switch_off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# family -> what a LoRA layer's module name contains
FAMILIES = {
    "self-attention": (".attn1.",),
    "cross-attention": (".attn2.",),
    "convolutions": (".conv1", ".conv2"),
    "feed-forward": (".ff.net.",),
}
COLUMNS = {
    "fidelity_mean": "fidelity",
    "fidelity_leak_mean": "leak (fid.)",
    "identity_acc_mean": "identity",
    "collapse_rate_mean": "collapse",
    "paired_preservation_mean": "paired",
    "colour_distance_mean": "colour dist.",
    "valid_rate_mean": "valid",
}


def in_family(module_name: str, family: str) -> bool:
    return any(part in module_name + "." for part in FAMILIES[family])


def switch_off_family(unet, family: str | None) -> int:
    """Every LoRA layer of `unet` on, then those of `family` off (None: all stay on); returns how many went off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    off = 0
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            keep = family is None or not in_family(name, family)
            module.enable_adapters(keep)
            off += not keep
    return off


def family_sampler(family_of: dict[str, str | None]):
    """An evaluation Sampler that activates a method's adapter and switches its family's LoRA layers off."""
    from catlab.evaluation.images import Sampler

    class FamilyOff(Sampler):
        def activate(self, pipe, method: str, adapter) -> None:
            super().activate(pipe, method, adapter)
            if adapter is None:  # the base model: every LoRA layer is off already
                return
            off = switch_off_family(pipe.unet, family_of[method])  # every layer back on first, then the family off
            if family_of[method] and off == 0:
                raise SystemExit(f"{adapter}: it has no LoRA layer in the {family_of[method]} family")

    return FamilyOff()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder with recipe.json, concept/ and runs/SETTING_seedN/adapter")
    ap.add_argument("--setting", required=True, help="the run name before _seedN (e.g. cat, or a variant's v_... name)")
    ap.add_argument(
        "--families", default=",".join(FAMILIES), help=f"which to switch off (default: {','.join(FAMILIES)})"
    )
    args = ap.parse_args(argv)

    recipe_path = args.folder / "recipe.json"
    if not recipe_path.is_file():
        raise SystemExit(f"{args.folder}: no recipe.json; pass a folder written by catlab demo or unconditional_source")
    recipe = json.loads(recipe_path.read_text())
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"--families: {unknown} unknown; choose from {list(FAMILIES)}")
    seeds = range(recipe["first_seed"], recipe["first_seed"] + recipe["n_seeds"])
    adapters, family_of = {"base": None}, {"base": None}
    for s in seeds:
        adapter = args.folder / "runs" / f"{args.setting}_seed{s}" / "adapter"
        if not adapter.is_dir():
            raise SystemExit(f"{adapter}: not there; --setting is the run's name before _seed{s}")
        for family in [None, *families]:
            method = f"{'whole' if family is None else 'no ' + family}_s{s}"
            adapters[method], family_of[method] = adapter, family

    import torch

    sys.path.insert(0, str(Path(__file__).parent))  # unconditional_source.py, beside this script
    from unconditional_source import _recipe_seeds

    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.protocol import evaluate, load_concept
    from catlab.evaluation.scoring import Scorers
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.world import toy_concept

    torch.set_num_threads(2)
    c = toy_concept(recipe["concept"])
    class_seeds, trigger_seeds = _recipe_seeds(recipe)
    res = evaluate(
        "toyworld",
        adapters,
        load_concept(args.folder / "concept", c.trigger, c.class_word),
        sampling=EvalSampling(templates=("a {trigger} {class}",), seeds=class_seeds, trigger_seeds=trigger_seeds),
        scorers=Scorers(oracle=load_oracle()),
        out_dir=args.folder / "eval_layer_switch_off",
        sampler=family_sampler(family_of),
    )
    s = res.summary.set_index("method")[[k for k in COLUMNS if k in res.summary]].rename(columns=COLUMNS)
    s = s.drop(index="base").dropna(axis=1, how="all")
    g = s.groupby([m.rsplit("_s", 1)[0] for m in s.index], sort=False)
    cells = g.mean().map(lambda v: f"{v:.2f}") + " ± " + g.std().fillna(0.0).map(lambda v: f"{v:.2f}")
    print(
        f"\n{recipe['concept']} ({args.setting}), training seeds {seeds.start}-{seeds.stop - 1}: one family of LoRA "
        f"layers switched off at a time; mean ± std over training seeds\n{cells.to_string()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
