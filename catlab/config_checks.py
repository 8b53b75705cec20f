"""The checks of a TrainConfig that need nothing but its fields: types from the annotations, shares, the
trigger's embedding, anchor prompts. `TrainConfig.validate` collects their messages (each names the field and how
to fix it)."""

from __future__ import annotations

import dataclasses
import numbers
import os

FIELD_TYPES = {
    "int": (numbers.Integral,),
    "float": (numbers.Real,),
    "str": (str, os.PathLike),
    "bool": (bool,),
}  # numpy numbers too


def trigger_embedding_problems(cfg) -> list[str]:
    """Settings of the trigger's embedding that mean nothing without its rate."""
    problems = []
    if cfg.trigger_embedding_init and not cfg.trigger_embedding_lr > 0:
        problems.append(
            f"trigger_embedding_init={cfg.trigger_embedding_init!r} needs trigger_embedding_lr > 0 (the trigger's "
            "embedding trains only then): set a rate, or leave trigger_embedding_init empty"
        )
    if cfg.trigger_embedding_first and not cfg.trigger_embedding_lr > 0:
        problems.append(
            f"trigger_embedding_first={cfg.trigger_embedding_first} needs trigger_embedding_lr > 0 (the phase "
            "trains the trigger's embedding alone): set a rate, or leave trigger_embedding_first at 0"
        )
    return problems


def share_problems(cfg) -> list[str]:
    """The fields that are shares of a batch or of the updates."""
    problems = []
    if not 0.0 < cfg.cat_share <= 1.0:
        problems.append(
            f"cat_share={cfg.cat_share}: must be above 0 and at most 1 (a share of the batch; 1 = every row)"
        )
    if not 0.0 < cfg.prior_share <= 1.0:
        problems.append(
            f"prior_share={cfg.prior_share}: must be above 0 and at most 1 (class images per step as a share of "
            "batch_size; 1 = one per concept image)"
        )
    if not 0.0 <= cfg.cat_null_share <= 1.0:
        problems.append(f"cat_null_share={cfg.cat_null_share}: must be between 0 and 1 (a share of the batch)")
    if not 0.0 <= cfg.cat_lambda_warmup <= 1.0:
        problems.append(
            f"cat_lambda_warmup={cfg.cat_lambda_warmup}: must be between 0 and 1 (a share of the updates; 0 = off)"
        )
    if not 0.0 <= cfg.trigger_embedding_first < 1.0:
        problems.append(
            f"trigger_embedding_first={cfg.trigger_embedding_first}: must be at least 0 and below 1 (a share of the "
            "updates; the LoRA needs some of them)"
        )
    return problems


def anchor_problems(cfg) -> list[str]:
    """Anchor prompts that name a concept's trigger (anchors hold the base model where no concept is)."""
    triggers = {c.trigger for c in cfg.concepts}
    named = [p for p in cfg.anchor_prompts if triggers & set(p.split())]
    if not named:
        return []
    return [
        f"anchor_prompts {named} name a trigger: anchors hold the base model where no concept is; drop the trigger "
        "word (e.g. 'a square')"
    ]


def type_problems(cfg) -> list[str]:
    """Fields whose value has the wrong type ('steps: ten', '--set rank=true'), from the annotations."""
    problems = []
    for f in dataclasses.fields(cfg):
        v, kinds = getattr(cfg, f.name), [k.strip() for k in str(f.type).split("|")]
        if v is None and "None" in kinds:
            continue
        if kinds[0].startswith("list[") and isinstance(v, (list, tuple)):
            inner = FIELD_TYPES.get(kinds[0][5:-1])
            if inner is None or all(
                isinstance(x, inner) and not (isinstance(x, bool) and kinds[0] != "list[bool]") for x in v
            ):
                continue
        elif (
            kinds[0] in FIELD_TYPES
            and isinstance(v, FIELD_TYPES[kinds[0]])
            and not (isinstance(v, bool) and kinds[0] != "bool")
        ):
            continue
        problems.append(f"{f.name}={v!r}: expected {' or '.join(k.replace('None', 'null') for k in kinds)}")
    return problems
