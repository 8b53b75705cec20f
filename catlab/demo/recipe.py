"""What the demo runs (`DemoRecipe`), what each run left behind (`DemoRun`) and what the report is made of
(`DemoResults`): the vocabulary that `experiment` writes and `report` reads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from catlab.config import ConceptConfig, TrainConfig, recipe_overrides
from catlab.evaluation.images import EvalSampling

METHODS = {
    "lora": "LoRA",
    "dreambooth": "DreamBooth-LoRA",
    "cat": "CAT",
    "paper_cat": "CAT (paper's term)",
}  # method key -> its name in tables and figures; a key is a regime, or a variant of one (METHOD_SETTINGS)

# The CAT term as the paper writes it (Park et al. 2024, arXiv 2404.07554, eq. 3): lambda 1, the trigger-free caption
# of each concept image, no guidance; beside catlab's recipe ("cat") on the same seeds, so a reader sees what each adds
METHOD_SETTINGS = {
    "paper_cat": dict(
        regime="cat", cat_lambda=1.0, cat_anchor="concept", cat_guidance=0.0, cat_null_share=0.0, cat_share=1.0
    ),
}

COLUMNS = [
    "IS",
    "PS",
    "KP",
    "KPS",
    "DIV",
    "Vendi",
    "PRES",
    "colour_entropy",
    "collapse_rate",
    "identity_acc",
    "fidelity",
    "colour_fidelity",
    "setting_fidelity",
    "size_fidelity",
    "trigger_colour_distance",
    "trigger_valid_rate",
    "paired_preservation",
    "colour_distance",
    "valid_rate",
    "held_out_paired_preservation",
    "held_out_colour_distance",
]
# prompts no concept names, scored against the base model beside the class (docs/metrics.md, "Held-out prompts"):
# the world's other classes (held_out.other_classes) and the class in a setting the concept's captions never use
HELD_OUT_PROMPTS = ("a {class} on a dark background",)
# sampling steps of a quick run (--quick): every model is still drawn, scored and reported, in a fifth of the time
QUICK_SAMPLE_STEPS = 5


def _demo_sampling() -> EvalSampling:
    # >= 48 class samples per adapter: fewer measure even the base model's class as narrow; identity is a rate, and
    # 3 training seeds x 24 trigger samples measure it to about +-0.05 (docs/results.md, the headline)
    # 8 seeds per held-out prompt: x 3 training seeds, 24 pairs per prompt and method, enough for paired preservation
    # against the base model (it is a rate) at a third of the class prompt's sampling cost
    return EvalSampling(templates=("a {trigger} {class}",), seeds=48, trigger_seeds=24, held_out_seeds=8)


@dataclass(frozen=True)
class DemoRecipe:
    """The headline experiment: one set of TrainConfig overrides for every method (a named recipe of
    `catlab.recipes.RECIPES`, "demo" unless `named` picks another) and how the adapters are sampled for scoring."""

    train: dict[str, Any] = field(default_factory=lambda: recipe_overrides("demo"))
    sampling: EvalSampling = field(default_factory=_demo_sampling)
    grid_seeds: int = 8  # columns of the report's grids
    name: str = "demo"  # the key of catlab.recipes.RECIPES that `train` is, or "changed" (with_train)

    @classmethod
    def named(cls, name: str) -> DemoRecipe:
        """The demo with another named recipe of catlab.recipes.RECIPES for every method."""
        return cls(train=recipe_overrides(name), name=name)

    @classmethod
    def quick(cls, name: str = "demo") -> DemoRecipe:
        """Checks the plumbing only: the numbers mean nothing."""
        train = {**recipe_overrides(name), "steps": 4, "batch_size": 2, "num_class_images": 2}
        sampling = replace(
            _demo_sampling(), seeds=2, trigger_seeds=2, held_out_seeds=1, num_inference_steps=QUICK_SAMPLE_STEPS
        )
        return cls(train=train, sampling=sampling, grid_seeds=2, name=name)

    def sampling_for(self, class_word: str) -> EvalSampling:
        """The sampling settings with the held-out prompts for a concept of `class_word` (other classes, and the
        class in a held-out setting), unless the recipe names its own."""
        from catlab.evaluation.held_out import other_classes

        if self.sampling.held_out:
            return self.sampling
        return replace(self.sampling, held_out=(*other_classes(class_word), *HELD_OUT_PROMPTS))

    def with_train(self, **overrides) -> DemoRecipe:
        """The same recipe with some TrainConfig fields changed (every method alike)."""
        unknown = sorted(set(overrides) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"not TrainConfig fields: {unknown}")
        return replace(self, train={**self.train, **overrides}, name="changed")

    def train_config(self, key: str, seed: int, concept: ConceptConfig, out: Path) -> TrainConfig:
        """The config one demo run trains with: the recipe, the method (a key of METHODS) and seed, and where the demo
        keeps things."""
        return TrainConfig(
            **{
                **self.train,
                **METHOD_SETTINGS.get(key, {"regime": key}),
                "concepts": [concept],
                "seed": seed,
                "output_dir": str(out / "runs" / f"{key}_seed{seed}"),
                "class_images_dir": str(out / "class_images"),  # drawn once, shared by every run
                "checkpoint_every": 0,
                "validate_every": 0,
                "log_every": 10,
            }
        )

    def to_json(self) -> dict:
        """What recipe.json records: the overrides and the sampling settings."""
        from dataclasses import asdict

        return {
            "recipe": self.name,
            "train": self.train,
            "sampling": asdict(self.sampling),
            "grid_seeds": self.grid_seeds,
        }


@dataclass
class DemoRun:
    """One adapter the demo trained: its method and training seed, where it is saved, and what it cost."""

    key: str  # a key of METHODS: the regime, or a variant of one
    seed: int
    adapter: Path
    train_s: float  # training wall time, without the class images
    class_images_s: float  # time to draw the class images (DreamBooth's up-front cost; CAT's anchors reuse them)
    history: list[dict]  # the trainer's per-step logs
    config: TrainConfig | None = None  # what it trained with

    @property
    def method(self) -> str:
        return METHODS[self.key]

    @property
    def name(self) -> str:
        """The adapter's name in the evaluation tables: method key and seed."""
        return f"{self.key}_s{self.seed}"


@dataclass
class DemoResults:
    """Everything the report shows."""

    out: Path
    concept: Any  # the toy concept (name, trigger, class_word)
    recipe: DemoRecipe
    runs: list[DemoRun]
    per_image: pd.DataFrame  # evaluate's table: one row per method x prompt x seed
    table: pd.DataFrame  # one row per method, mean and std over training seeds
    costs: pd.DataFrame
    n_seeds: int
    total_s: float
    rerun: str  # the command that reproduces the run
    # what it ran on (catlab.environment.describe_environment): the digits reproduce on the same CPU kernels and libraries
    environment: dict[str, str] = field(default_factory=dict)
