"""Named training recipes: sets of TrainConfig overrides, the same for every regime.

`TrainConfig.from_recipe("demo", ...)`, `catlab demo --recipe NAME` and `recipe="demo"` in the notebooks read them.
Plain data, so that the command line can list the names without importing the config's machinery.
"""

from __future__ import annotations

from typing import Any

# Named sets of TrainConfig overrides, the same for every regime: `TrainConfig.from_recipe("demo", ...)`, and
# `recipe="demo"` in the notebooks. Each value's why is in a line; the runs that chose it are in docs/results.md
# ("The demo recipe").
RECIPES: dict[str, dict[str, Any]] = {
    "demo": dict(
        steps=600,  # about what an attention-only LoRA needs to draw a toy concept at this rate
        learning_rate=5e-3,  # toy-world scale; SD 1.5 LoRAs use about 1e-4 at 512 px
        lr_scheduler="cosine",  # cosine decay (Loshchilov & Hutter 2017): CAT learnt both demo concepts more reliably
        rank=4,
        batch_size=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],  # every attention projection, as the CAT authors
        cat_lambda=4.0,  # the weakest λ that held the class on every seed set tried
        cat_anchor="class",  # the term on the base model's own class images: where class prompts go at sampling time
        cat_guidance=3.0,  # hold the guided class prediction, at the toy world's sampling guidance
        cat_null_share=0.0,  # the guided term holds the empty caption itself
        cat_share=0.5,  # 2 class images per step carry the term: held the class about as well as 4, for less
        cat_every=1,
        prior_loss_weight=1.0,  # DreamBooth's default
        prior_share=0.5,  # DreamBooth sees as many class images per step as CAT's term does
        num_class_images=40,  # drawn once by the base model; DreamBooth's prior and CAT's anchors share them
        random_flip=False,  # the two-tone concepts are not mirror-symmetric
    ),
}
# The demo's recipe with more room for the concept (docs/results.md, "LoRA on every layer, and the trigger's own
# embedding"): CAT then learns the setting as faithfully as plain LoRA, on fresh seeds too; ~1.4x the training time
RECIPES["all_layers_pivotal"] = dict(
    RECIPES["demo"],
    # the ResNet convolutions and feed-forward layers as well as attention (LoCon-style): plain LoRA then draws the
    # concept's colours and backdrop, which attention alone does not
    target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "ff.net.0.proj", "ff.net.2"],
    # pivotal tuning: the trigger's own embedding trains too, a place for the concept that CAT's term cannot reach
    trigger_embedding_lr=5e-3,
)


def recipe_overrides(name: str) -> dict[str, Any]:
    """A copy of the named recipe's TrainConfig overrides."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in RECIPES[name].items()}
