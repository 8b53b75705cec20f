"""`catlab` command line: argument parsing only; the work happens in the package.

A user's mistake (a bad config field, a missing file, an empty concept folder, a run that diverged) ends as one
`catlab: error: ...` line on stderr (details, if any, indented below it) and exit status 1; `CATLAB_DEBUG=1` shows the
traceback instead. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# what catlab raises for bad input: ValueError (configs, data: ConceptDataError, AdapterMismatchError), OSError
# (FileNotFoundError, FileExistsError, a base model that cannot be loaded), FloatingPointError (a diverged run)
USER_ERRORS = (ValueError, OSError, FloatingPointError)
REAL_EMBEDDER = "openai/clip-vit-base-patch32"  # the CAT authors' CLIP: `catlab eval`'s embedder for a real base model

DESCRIPTION = """catlab: knowledge-preserving adapter training (Contrastive Adapter Training, arXiv 2404.07554)
for diffusion models. Runs offline on a CPU with the shipped toy world, or on Stable Diffusion 1.5 with a GPU."""


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass e.g. 4") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a whole number >= 1")
    return value


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="base vs LoRA vs DreamBooth-LoRA vs CAT on the toy world, with a report",
        description="Train plain LoRA, DreamBooth prior-preservation LoRA and CAT LoRA on a toy concept with the "
        "same data, seed and budget; evaluate them and the base model; write a report.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds (default: 3)")
    p.add_argument("--first-seed", type=int, default=0, help="first training seed (default: 0; seeds are consecutive)")
    p.add_argument(
        "--concept",
        default="circle_on_navy",
        help="toy concept (default: circle_on_navy; `catlab toyworld concepts` lists them)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a few steps and samples: checks the plumbing in under 2 minutes"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training runs side by side, one process each (default: one per CPU core; 1 on a GPU)",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA adapter (plain, DreamBooth prior preservation, or CAT) from a YAML config",
        description="Train an adapter. Fields of the config can be overridden with --set key=value.",
    )
    p.add_argument("--config", required=True, help="YAML run config (see docs/training.md for every field)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its last checkpoint (as resume_from_checkpoint: latest)",
    )


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score adapters against their base model: IS, PS, KP, KPS, diversity; DINO, CLIP-I, CLIP-T",
        description="Generate with the base model and each adapter on the same seeds, embed, score, "
        "and write per-image and summary CSVs.",
    )
    p.add_argument("--base", default="toyworld", help="base model: 'toyworld', a diffusers folder or a hub id")
    p.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH", help="an adapter to score (repeatable)"
    )
    p.add_argument(
        "--concept",
        required=True,
        action="append",
        help="folder of the concept's reference images, or a toy concept name; repeat it for a multi-concept "
        "adapter (each model is then scored on every concept: docs/metrics.md, 'Several concepts')",
    )
    p.add_argument(
        "--trigger", action="append", help="trigger token, e.g. sks (one per --concept; else concept.json's)"
    )
    p.add_argument("--class-word", action="append", help="class word, e.g. circle (one per --concept, as --trigger)")
    p.add_argument(
        "--single",
        action="append",
        default=[],
        metavar="CONCEPT=NAME",
        help="with several concepts: the --adapter NAME trained on CONCEPT alone, whose identity the others are "
        "measured against (repeatable)",
    )
    p.add_argument(
        "--embedder",
        default=None,
        help=f"'toyworld', a CLIP folder or hub id (default: toyworld for the toy world, {REAL_EMBEDDER} otherwise)",
    )
    _add_eval_sampling(p)
    p.add_argument("--out", default="runs/eval", help="output folder (default: runs/eval)")
    _add_eval_backbones(p)


def _add_eval_sampling(p) -> None:
    """`catlab eval`'s sampling flags (EvalSampling)."""
    p.add_argument(
        "--templates",
        nargs="+",
        default=None,
        metavar="TEMPLATE",
        help="prompt templates with {trigger} and {class}, each also drawn trigger-free (default: prompts "
        "the toy world can draw); 'dreambench' = DreamBooth's photo prompts, for a real base model",
    )
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: the base model's)")
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the base model's)"
    )
    _add_batch_size(p)
    p.add_argument("--seeds", type=int, default=8, help="seeds per prompt (default: 8)")
    p.add_argument(
        "--trigger-seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds for the trigger prompts, if not --seeds (e.g. fewer: identity is a rate, the class needs many samples)",
    )
    p.add_argument(
        "--held-out",
        nargs="+",
        default=None,
        metavar="PROMPT",
        help="prompts no concept names, drawn as written by every model and scored against the base model "
        "({class} = the class word); 'other-classes' = the toy world's other shapes (docs/metrics.md, 'Held out')",
    )
    p.add_argument("--held-out-seeds", type=int, default=None, metavar="N", help="seeds per held-out prompt")
    _add_unconditional(p)


def _add_eval_backbones(p) -> None:
    """`catlab eval`'s flags for DreamBooth's metrics (Scorers.dino, Scorers.clip)."""
    p.add_argument(
        "--dino",
        metavar="PATH",
        default=None,
        help="add DreamBooth's DINO score (raw cosine) with this ViT/DINOv2 folder or hub id, e.g. facebook/dino-vits16",
    )
    p.add_argument(
        "--clip",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="add DreamBooth's CLIP-I and CLIP-T (raw cosines): alone with --embedder's CLIP, or with this CLIP folder or hub id",
    )


def _add_batch_size(p) -> None:
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="images per pipeline call (default: 32 on a CPU, 8 on a GPU; lower it if the GPU runs out of memory)",
    )


def _add_unconditional(p) -> None:
    p.add_argument(
        "--unconditional",
        choices=("adapted", "base"),
        default="adapted",
        help="classifier-free guidance's unconditional branch: from the adapted model as every pipeline does "
        "(default), or from the base model: a diagnostic of where an adapter put its concept (docs/results.md)",
    )


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images for prompts x seeds, with or without adapters, as a labelled grid",
        description="Generate a grid: one row per prompt, one column per seed.",
    )
    p.add_argument("prompts", nargs="+", help="prompts, e.g. 'a sks circle' 'a circle'")
    p.add_argument("--base", default="toyworld", help="base model (default: toyworld)")
    p.add_argument("--adapter", default=None, help="folder or file of a LoRA adapter")
    p.add_argument("--scale", type=float, default=1.0, help="adapter scale (default: 1.0)")
    p.add_argument("--seeds", type=int, default=8, help="number of seeds (default: 8)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    _add_batch_size(p)
    _add_unconditional(p)
    p.add_argument("--out", default="runs/sample/grid.png", help="output image (default: runs/sample/grid.png)")


def _add_toyworld(sub) -> None:
    p = sub.add_parser(
        "toyworld",
        help="the embedded toy world: pretrain it, export concepts, check the shipped weights",
        description="The toy world: drawn shapes, a tiny Stable Diffusion pipeline, a tiny CLIP and an oracle.",
    )
    tw = p.add_subparsers(dest="toyworld_cmd", metavar="ACTION", required=True)
    pre = tw.add_parser(
        "pretrain", help="retrain the pipeline, CLIP and oracle from scratch (about an hour on 2 CPU cores)"
    )
    pre.add_argument("--out", required=True, help="asset folder to write (pipeline/, clip/, oracle.safetensors)")
    pre.add_argument("--quick", action="store_true", help="a few steps of every stage (for tests)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument(
        "--stages",
        default="vae,oracle,clip,unet,open_colours",
        help="comma-separated stages to (re)build into --out, e.g. 'oracle' after adding a toy concept, "
        "'open_colours' to open the autoencoder to colours the world lacks",
    )
    exp = tw.add_parser("export-concept", help="write a toy concept as a folder of images + captions")
    exp.add_argument("name", help="concept name, e.g. two_tone_circle")
    exp.add_argument("--out", required=True, help="folder to write")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    tw.add_parser("check", help="load the shipped weights and report what is there")
    tw.add_parser("concepts", help="list the toy concepts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catlab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_train, _add_eval, _add_sample, _add_toyworld):
        add(sub)
    return parser


def _parse_overrides(pairs: list[str]) -> dict:
    import yaml

    from catlab.config import load_yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = load_yaml(v)  # as in a config file: 1e-4 is a number
        except yaml.YAMLError as e:
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({' '.join(str(e).split())})") from e
    return out


def _train_config(args):
    from catlab.config import TrainConfig, load_config

    cfg = load_config(args.config)
    if args.set:
        try:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **_parse_overrides(args.set)})
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("--set") else f"--set: {e}") from e
    return cfg


def _check_adapter(path: str) -> None:
    """Before any model loads: the adapter a command names exists."""
    from catlab.models import LORA_WEIGHT_NAME

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"adapter {p} does not exist; pass the adapter folder of a run (output_dir/adapter) or a .safetensors file"
        )
    if p.is_dir() and not (p / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(f"no {LORA_WEIGHT_NAME} in {p}; pass the adapter folder of a run (output_dir/adapter)")


def _run_toyworld(args) -> int:
    from catlab.toyworld import world

    if args.toyworld_cmd == "pretrain":
        from catlab.toyworld.pretrain import PretrainConfig, pretrain

        cfg = PretrainConfig.tiny() if args.quick else PretrainConfig()
        cfg.seed = args.seed
        cfg.stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = sorted(set(cfg.stages) - set(PretrainConfig.stages))
        if unknown:
            raise SystemExit(
                f"catlab: error: --stages: unknown stage(s) {unknown}; choose from {', '.join(PretrainConfig.stages)}"
            )
        out = pretrain(args.out, cfg)
        print(f"toy world written to {out}")
    elif args.toyworld_cmd == "export-concept":
        if args.name not in world.CONCEPTS:
            raise SystemExit(f"catlab: error: unknown concept {args.name!r}; choose one of {sorted(world.CONCEPTS)}")
        out = world.export_concept(args.name, args.out, overwrite=args.overwrite)
        print(f"concept {args.name} written to {out}")
    elif args.toyworld_cmd == "concepts":
        for c in world.CONCEPTS.values():
            print(
                f"{c.name:18s} trigger={c.trigger:4s} class={c.class_word:8s} {c.colour}/{c.second_colour} {c.pattern}"
            )
    elif args.toyworld_cmd == "check":
        from catlab.toyworld.assets import asset_root, load_oracle, toyworld_path

        for part in ("pipeline", "clip", "oracle"):
            print(f"{part:9s} {toyworld_path(part)}")
        load_oracle()
        print(f"all toy-world assets present in {asset_root()}")
    return 0


def _error(message: str) -> int:
    print(f"catlab: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(
            args
        )  # a command's own SystemExit("catlab: error: ...") passes: Python prints it as one line, exit 1
    except USER_ERRORS as e:
        if os.environ.get("CATLAB_DEBUG", "").strip() not in ("", "0"):
            raise
        return _error(str(e))
    except KeyboardInterrupt:
        print("catlab: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    if args.command == "toyworld":
        return _run_toyworld(args)
    if args.command == "train":
        from catlab.training.loop import train

        cfg = _train_config(args)
        train(cfg, resume=args.resume)
        return 0
    if args.command == "sample":
        if args.adapter:
            _check_adapter(args.adapter)
        return _sample(args)
    if args.command == "eval":
        for pair in args.adapter:
            name, sep, path = pair.partition("=")
            if sep and name and path:
                _check_adapter(path)
        return _evaluate(args)
    if args.command == "demo":
        from catlab.demo.experiment import run_demo

        run_demo(
            out=Path(args.out),
            n_seeds=args.seeds,
            concept=args.concept,
            quick=args.quick,
            overwrite=args.overwrite,
            first_seed=args.first_seed,
            workers=args.workers,
        )
        return 0
    return 2  # unreachable: argparse rejects unknown commands


def _sample(args) -> int:
    """`catlab sample`: one row per prompt, one column per seed."""
    from catlab.files import save_image_atomic
    from catlab.models import load_for_sampling, load_lora
    from catlab.sampling.grids import image_grid
    from catlab.sampling.sampler import generate

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"catlab: error: {out} exists; choose another --out (nothing is overwritten)")
    pipe = load_for_sampling(args.base)  # on the GPU if there is one, in half precision there
    if args.adapter:
        load_lora(pipe, args.adapter, "adapter", scale=args.scale)
    seeds = list(range(args.seeds))
    images = generate(
        pipe,
        args.prompts,
        seeds,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        batch_size=args.batch_size,
        unconditional=args.unconditional,
    )
    grid = image_grid(images, row_labels=args.prompts, col_labels=[f"seed {s}" for s in seeds])
    save_image_atomic(grid, out)
    print(f"wrote {out}")
    return 0


def _eval_sampling(args):
    """`catlab eval`'s sampling flags as an EvalSampling; a flag left out keeps evaluate's default."""
    from catlab.evaluation.images import EvalSampling

    given = {
        "seeds": args.seeds,
        "trigger_seeds": getattr(args, "trigger_seeds", None),
        "unconditional": args.unconditional,
        "templates": _eval_templates(getattr(args, "templates", None)),
        "num_inference_steps": getattr(args, "steps", None),
        "guidance_scale": getattr(args, "guidance", None),
        "batch_size": getattr(args, "batch_size", None),
        "held_out_seeds": getattr(args, "held_out_seeds", None),
    }
    return EvalSampling(**{k: v for k, v in given.items() if v is not None})


def _eval_held_out(given: list[str] | None, class_word: str) -> tuple[str, ...]:
    """--held-out as given, 'other-classes' as the toy world's shapes other than the class."""
    from catlab.evaluation.held_out import other_classes

    out: list[str] = []
    for prompt in given or []:
        out += other_classes(class_word) if prompt == "other-classes" else [prompt]
    return tuple(out)


def _eval_templates(given: list[str] | None) -> tuple[str, ...] | None:
    """--templates as given, 'dreambench' as DreamBooth's photo prompts; None keeps evaluate's default."""
    if given == ["dreambench"]:
        from catlab.sampling.prompts import REAL_WORLD_TEMPLATES

        return REAL_WORLD_TEMPLATES
    return None if given is None else tuple(given)


def _eval_embedder(embedder: str | None, base: str) -> str:
    """--embedder, or the default for the base: the toy CLIP only for the toy world, whose 32 px drawings it knows;
    photos scored by it would give numbers that mean nothing, so a real base gets a real CLIP."""
    if embedder is not None:
        if embedder == "toyworld" and base != "toyworld":
            print(
                f"note: --embedder toyworld scores {base}'s images with the toy world's 32 px CLIP; "
                f"for photos use a real CLIP, e.g. --embedder {REAL_EMBEDDER}"
            )
        return embedder
    if base == "toyworld":
        return "toyworld"
    print(f"note: scoring with {REAL_EMBEDDER} (the CAT authors' CLIP, downloaded once); --embedder picks another")
    return REAL_EMBEDDER


def _evaluate(args) -> int:
    """`catlab eval`: score adapters against the base model; prints the summary and writes the CSVs."""
    import pandas as pd

    from catlab.evaluation.protocol import evaluate
    from catlab.evaluation.scoring import Scorers, backbone_note, style_summary

    adapters = {}
    for pair in args.adapter:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"catlab: error: --adapter expects NAME=PATH, got {pair!r}")
        adapters[name] = path
    oracle = None
    if args.base == "toyworld":
        from catlab.toyworld.assets import ToyWorldAssetError, toyworld_path

        try:
            oracle = toyworld_path("oracle")
        except ToyWorldAssetError as e:
            print(f"note: oracle scores skipped ({e})")
    embedder = _eval_embedder(args.embedder, args.base)
    # --dino PATH and --clip [PATH] add DreamBooth's backbones
    scorers = Scorers(embedder, oracle, dino=getattr(args, "dino", None), clip=getattr(args, "clip", None))
    try:
        concepts = _eval_concepts(args)
        if len(concepts) > 1:
            return _evaluate_concepts(args, adapters, concepts, scorers)
        concept = concepts[0]
        given = getattr(args, "held_out", None)
        held_out = _eval_held_out(given, concept.class_word) if given else ()
        sampling = dataclasses.replace(_eval_sampling(args), held_out=held_out) if held_out else _eval_sampling(args)
        res = evaluate(args.base, adapters, concept, sampling=sampling, scorers=scorers, out_dir=args.out)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"catlab: error: {e}") from e
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(style_summary(res.summary).data.to_string())
    if res.summary.attrs.get("backbones"):
        print(f"backbones: {backbone_note(res.summary.attrs['backbones'])}")
    if held_out and "preserved" in res.per_image:
        from catlab.evaluation.held_out import preservation_by_prompt

        print("\nbeyond the trained class, per prompt (against the base model's image of the same prompt and seed):")
        print(preservation_by_prompt(res.per_image).round(3).to_string(index=False))
    print(
        f"wrote {Path(args.out) / 'per_image.csv'}, {Path(args.out) / 'summary.csv'} and {Path(args.out) / 'backbones.json'}"
    )
    return 0


def _eval_concepts(args) -> list:
    """--concept (repeated) with its --trigger and --class-word, matched by position; a folder's concept.json or a
    toy concept name stands in for both."""
    from catlab.evaluation.protocol import load_concept

    n = len(args.concept)
    for flag, given in (("--trigger", args.trigger), ("--class-word", args.class_word)):
        if given and len(given) != n:
            raise ValueError(f"{flag} given {len(given)} times for {n} --concept; give one per concept, in order")
    return [
        load_concept(c, (args.trigger or [None] * n)[i], (args.class_word or [None] * n)[i])
        for i, c in enumerate(args.concept)
    ]


def _evaluate_concepts(args, adapters: dict, concepts: list, scorers) -> int:
    """`catlab eval` with several --concept: every model on every concept; the table of
    catlab.evaluation.multi_concept, and each prompt no concept names."""
    import pandas as pd

    from catlab.evaluation.multi_concept import (
        concept_label,
        evaluate_concepts,
        multi_concept_table,
        untouched_by_prompt,
        untouched_prompts,
    )
    from catlab.files import write_csv_atomic

    labels = [concept_label(c) for c in concepts]
    single_of = {}
    for pair in args.single:
        concept, _, name = pair.partition("=")
        if concept not in labels or name not in adapters:
            raise ValueError(
                f"--single {pair!r}: expected CONCEPT=NAME with CONCEPT one of {labels} and NAME an --adapter"
            )
        single_of |= {(model, concept): name for model in adapters}
    held_out: list[str] = []  # none given: evaluate_concepts draws the prompts no concept names
    for prompt in getattr(args, "held_out", None) or []:
        held_out += untouched_prompts(concepts, settings=()) if prompt == "other-classes" else [prompt]
    sampling = dataclasses.replace(_eval_sampling(args), held_out=tuple(held_out))
    out = Path(args.out)
    per_image = evaluate_concepts(adapters, concepts, sampling, out, scorers, base=args.base)
    table, by_prompt = multi_concept_table(per_image, single_of), untouched_by_prompt(per_image)
    write_csv_atomic(out / "multi_concept.csv", table)
    write_csv_atomic(out / "untouched.csv", by_prompt)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table.round(3).to_string(index=False))
        print("\nprompts no concept names, per model (against the base model's image of the same prompt and seed):")
        print(by_prompt.round(3).to_string(index=False))
    print(
        f"wrote {out / 'multi_concept.csv'}, {out / 'untouched.csv'}, {out / 'per_image.csv'} and {out / 'summary.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
