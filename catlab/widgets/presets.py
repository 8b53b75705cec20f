"""Set-up and world presets: the SD 1.5 model names, the `WorldPreset` of each world (the CPU toy world and Stable
Diffusion 1.5), `concept_config` for a concept folder or an exported toy concept, and a notebook's set-up in one
call: `setup_notebook` gives a `Workbench` (preset, work folder, concept, run sizes, where the parameters cell wins
and None takes the preset's) and `make_train_config` a `TrainConfig` from it (optionally a named recipe's).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_CLIP = "openai/clip-vit-base-patch32"


@dataclass(frozen=True, kw_only=True)
class WorldPreset:
    """Base model, embedder and run sizes of a world: the CPU toy world or Stable Diffusion 1.5 on a GPU."""

    name: str
    base_model: str  # for load_base / TrainConfig.base_model
    embedder: str  # for catlab.evaluation.embedders.load_embedder
    use_oracle: bool  # the toy world's oracle reads shape, colour and concept; real photos have none
    concept_px: int  # size at which a toy concept is exported (SD 1.5 needs >= 512 px images)
    resolution: int | None  # training resolution; None = the base model's native size
    mixed_precision: str
    steps: int
    rank: int
    learning_rate: float
    batch_size: int
    sample_steps: int
    guidance_scale: float | None  # None = the base model's default
    checkpoint_every: int  # 0 = none: a toy run takes seconds; an SD run on Colab must survive a disconnect
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


WORLDS = {
    "toy": WorldPreset(
        name="toy",
        base_model="toyworld",
        embedder="toyworld",
        use_oracle=True,
        concept_px=64,
        resolution=32,
        mixed_precision="no",
        steps=40,
        rank=4,
        learning_rate=2e-3,
        batch_size=4,
        sample_steps=10,
        guidance_scale=None,
        checkpoint_every=0,
    ),
    "sd15": WorldPreset(
        name="sd15",
        base_model=SD15_MODEL,
        embedder=SD15_CLIP,
        use_oracle=False,
        concept_px=512,
        resolution=512,
        mixed_precision="fp16",
        steps=900,
        rank=1,
        learning_rate=1e-4,
        batch_size=1,
        sample_steps=50,
        guidance_scale=7.5,
        checkpoint_every=150,
        seeds=list(range(8)),
    ),
}


def world_preset(world: str) -> WorldPreset:
    """The preset of `world` ('toy' or 'sd15'), with a clear error for anything else."""
    if world not in WORLDS:
        raise ValueError(f"world={world!r}: choose one of {sorted(WORLDS)} ('toy' runs on a CPU, 'sd15' needs a GPU)")
    return WORLDS[world]


def concept_config(
    concept: str | None = None,
    folder: str | Path | None = None,
    export_to: str | Path | None = None,
    trigger: str | None = None,
    class_word: str | None = None,
    px: int = 64,
) -> Any:
    """A ConceptConfig from a folder (trigger / class word default to its concept.json), or from a toy concept
    exported (overwriting) to `export_to` at `px` pixels when no folder is given."""
    from catlab.config import ConceptConfig
    from catlab.toyworld.world import CONCEPTS, export_concept

    meta: dict[str, Any] = {}
    if folder is None:
        if concept not in CONCEPTS:
            raise ValueError(
                f"concept={concept!r}: choose a toy concept ({', '.join(CONCEPTS)}) or pass a concept folder"
            )
        if export_to is None:
            raise ValueError("pass export_to= (where to write the toy concept's images)")
        folder = export_concept(concept, export_to, resolution=px, overwrite=True)
    folder = Path(folder).expanduser()
    if (folder / "concept.json").is_file():
        meta = json.loads((folder / "concept.json").read_text())
    elif concept in CONCEPTS:
        meta = {"trigger": CONCEPTS[concept].trigger, "class_word": CONCEPTS[concept].class_word}
    trigger, class_word = trigger or meta.get("trigger"), class_word or meta.get("class_word")
    if not trigger or not class_word:
        raise ValueError(f"{folder}: no concept.json says its trigger and class word; set trigger= and class_word=")
    return ConceptConfig(str(folder), trigger, class_word)


# the run sizes a world preset gives and a notebook's parameters cell may set (None = the preset's)
SIZES = ("steps", "rank", "learning_rate", "batch_size", "sample_steps", "seeds")


def fill_sizes(preset: WorldPreset, **sizes: Any) -> dict[str, Any]:
    """The run sizes: each value given (not None) wins, None takes the preset's. Where a given value differs from
    the preset's, one line says so: the parameters cell is used, never silently replaced."""
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise TypeError(f"unknown run size(s) {unknown}; the preset sizes are {list(SIZES)}")
    filled = {k: getattr(preset, k) if sizes.get(k) is None else sizes[k] for k in SIZES}
    differ = [f"{k}={filled[k]!r} (preset {getattr(preset, k)!r})" for k in SIZES if filled[k] != getattr(preset, k)]
    if differ:
        print(f"from the parameters, not the {preset.name!r} preset: {', '.join(differ)}")
    return filled


@dataclass
class Workbench:
    """What a notebook's set-up cell gives the cells below it: the world's preset, the notebook's own work folder,
    the device, the base model, the concept (if any) and the run sizes (the parameters, None filled from the preset)."""

    world: str
    preset: WorldPreset
    work: Path
    device: str
    base_model: str
    steps: int
    rank: int
    learning_rate: float
    batch_size: int
    sample_steps: int
    seeds: list[int]
    concept: Any = None  # a ConceptConfig, or None where the notebook makes its own (01_data_prep)
    # the libraries' notices are quiet from the set-up on; calling this brings them back (catlab.notices)
    restore_notices: Callable[[], None] = lambda: None

    @property
    def mixed_precision(self) -> str:
        """The world's mixed precision on a GPU; full precision on a CPU."""
        return self.preset.mixed_precision if self.device == "cuda" else "no"

    @property
    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for generate_methods / evaluate: the sampling steps and the world's guidance scale."""
        return {"num_inference_steps": self.sample_steps, "guidance_scale": self.preset.guidance_scale}

    def load_concept(
        self,
        concept: str | None = None,
        folder: str | Path | None = None,
        trigger: str | None = None,
        class_word: str | None = None,
        to: str = "concept",
    ) -> Any:
        """A ConceptConfig for `folder`, or for the toy `concept` exported to work/`to` at the world's concept size."""
        return concept_config(
            concept, folder, export_to=self.work / to, trigger=trigger, class_word=class_word, px=self.preset.concept_px
        )


def setup_notebook(
    world: str,
    out_root: str | Path,
    name: str,
    concept: str | None = None,
    concept_folder: str | Path | None = None,
    trigger: str | None = None,
    class_word: str | None = None,
    base_model: str | None = None,
    fresh: bool = False,
    **sizes: Any,
) -> Workbench:
    """Set up a notebook: the world's preset, its work folder out_root/name (earlier runs kept, so they are reused or
    resumed; `fresh=True` removes them first), the concept when one is given, and the run sizes (`SIZES`), where a
    value given here wins over the preset and None takes the preset's. Library notices are quiet until
    `wb.restore_notices()`. Loads no model."""
    import torch

    from catlab.notices import quiet_until_restored

    preset = world_preset(world)
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name={name!r}: give the notebook's name, a single folder name under out_root")
    filled = fill_sizes(preset, **sizes)
    work = Path(out_root) / name
    if fresh:
        if concept_folder is not None and work.resolve() in Path(concept_folder).expanduser().resolve().parents:
            raise ValueError(
                f"concept_folder={str(concept_folder)!r} lies in {work}, which fresh=True clears: copy it elsewhere first"
            )
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wb = Workbench(
        world, preset, work, device, base_model or preset.base_model, **filled, restore_notices=quiet_until_restored()
    )
    if concept is not None or concept_folder is not None:
        wb.concept = wb.load_concept(concept, concept_folder, trigger, class_word)
    print(
        f"world {world!r}: base model {wb.base_model!r} on {device}; {wb.steps} steps, rank {wb.rank}, lr {wb.learning_rate:g}, "
        f"batch {wb.batch_size}; work folder {work}" + (f"; {wb.concept}" if wb.concept else "")
    )
    return wb


def make_train_config(
    wb: Workbench,
    output_dir: str,
    *,
    regime: str,
    concepts: list | None = None,
    recipe: str | None = None,
    **fields: Any,
) -> Any:
    """A TrainConfig for the workbench: its base model, concept, run sizes, resolution, precision and checkpoints,
    written to work/output_dir, without sample grids during training. A named `recipe` ("demo": catlab.recipes.RECIPES)
    goes on top of the world's preset, and any field given here (not None) on top of both."""
    from catlab.config import TrainConfig, recipe_overrides

    preset = dict(
        base_model=wb.base_model,
        concepts=concepts or ([wb.concept] if wb.concept else []),
        output_dir=str(wb.work / output_dir),
        regime=regime,
        resolution=wb.preset.resolution,
        mixed_precision=wb.mixed_precision,
        steps=wb.steps,
        rank=wb.rank,
        learning_rate=wb.learning_rate,
        batch_size=wb.batch_size,
        validation_seeds=list(wb.seeds),
        validate_every=0,
        checkpoint_every=wb.preset.checkpoint_every,
        checkpoints_total_limit=2,
    )
    named = recipe_overrides(recipe) if recipe else {}
    return TrainConfig(**{**preset, **named, **{k: v for k, v in fields.items() if v is not None}})
