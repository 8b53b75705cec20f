"""`catlab` command line: argument parsing only; the work happens in the package. `parser` builds the parser,
`commands` (train, sample, toyworld) and `evaluate` (eval) turn arguments into calls; the demo is one call.

A user's mistake (a bad config field, a missing file, an empty concept folder, a run that diverged) ends as one
`catlab: error: ...` line on stderr (details, if any, indented below it) and exit status 1; `CATLAB_DEBUG=1` shows the
traceback instead. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from catlab.cli.commands import check_adapter, run_sample, run_toyworld, train_config
from catlab.cli.evaluate import run_eval
from catlab.cli.parser import build_parser

# what catlab raises for bad input: ValueError (configs, data: ConceptDataError, AdapterMismatchError), OSError
# (FileNotFoundError, FileExistsError, a base model that cannot be loaded), FloatingPointError (a diverged run)
USER_ERRORS = (ValueError, OSError, FloatingPointError)

__all__ = ["USER_ERRORS", "build_parser", "main"]


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
        return run_toyworld(args)
    if args.command == "train":
        from catlab.training.loop import train

        cfg = train_config(args)
        train(cfg, resume=args.resume)
        return 0
    if args.command == "sample":
        if args.adapter:
            check_adapter(args.adapter)
        return run_sample(args)
    if args.command == "eval":
        for pair in args.adapter:
            name, sep, path = pair.partition("=")
            if sep and name and path:
                check_adapter(path)
        return run_eval(args)
    if args.command == "demo":
        from catlab.demo.experiment import run_demo
        from catlab.demo.recipe import DemoRecipe

        run_demo(
            out=Path(args.out),
            n_seeds=args.seeds,
            concept=args.concept,
            quick=args.quick,
            recipe=DemoRecipe.quick(args.recipe) if args.quick else DemoRecipe.named(args.recipe),
            overwrite=args.overwrite,
            first_seed=args.first_seed,
            workers=args.workers,
        )
        return 0
    return 2  # unreachable: argparse rejects unknown commands
