"""The `eval` command: its flags as sampling settings, scorers and concepts; one concept's summary, or every model
on several concepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from catlab.cli.parser import REAL_EMBEDDER


def eval_sampling(args):
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


def run_eval(args) -> int:
    """`catlab eval`: score adapters against the base model; prints the summary and writes the CSVs."""
    import pandas as pd

    from catlab.evaluation.protocol import evaluate
    from catlab.evaluation.scoring import Scorers, backbone_note
    from catlab.evaluation.summary import style_summary

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
        concepts = concepts_of(args)
        if len(concepts) > 1:
            return run_eval_on_concepts(args, adapters, concepts, scorers)
        concept = concepts[0]
        given = getattr(args, "held_out", None)
        held_out = _eval_held_out(given, concept.class_word) if given else ()
        sampling = dataclasses.replace(eval_sampling(args), held_out=held_out) if held_out else eval_sampling(args)
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


def concepts_of(args) -> list:
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


def run_eval_on_concepts(args, adapters: dict, concepts: list, scorers) -> int:
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
    sampling = dataclasses.replace(eval_sampling(args), held_out=tuple(held_out))
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
