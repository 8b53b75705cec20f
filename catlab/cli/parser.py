"""`catlab`'s argument parser: the commands, their flags and their help; nothing here runs a command."""

from __future__ import annotations

import argparse

from catlab.recipes import RECIPES

REAL_EMBEDDER = "openai/clip-vit-base-patch32"  # the CAT authors' CLIP: `catlab eval`'s embedder for a real base model

DESCRIPTION = """catlab: knowledge-preserving adapter training (Contrastive Adapter Training, arXiv 2404.07554)
for diffusion models. Runs offline on a CPU with the shipped toy world, or on Stable Diffusion 1.5 with a GPU."""


def positive_int(text: str) -> int:
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
        "--recipe",
        default="demo",
        choices=sorted(RECIPES),
        help="the training recipe of every method (catlab.recipes.RECIPES; default: demo; all_layers_pivotal: LoRA "
        "on every layer and the trigger's own embedding, about 1.4x the training time)",
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
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the base model's)")
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
        type=positive_int,
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
