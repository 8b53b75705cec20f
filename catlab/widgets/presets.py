"""Set-up and world presets: `quiet()` for library notices, the SD 1.5 model names, the `WorldPreset` of each world
(the CPU toy world and Stable Diffusion 1.5), `concept_config` for a concept folder or an exported toy concept, and a
notebook's set-up in one call: `setup_notebook` gives a `Workbench` (preset, work folder, concept, run sizes, where the
parameters cell wins and None takes the preset's) and `make_train_config` a `TrainConfig` from it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_CLIP = "openai/clip-vit-base-patch32"


def quiet() -> None:
    """Hide library notices that do not concern a notebook reader: diffusers' "no text-encoder LoRA keys", peft's
    "multiple adapters" warning, and the weight-loading progress bars. Training and sampling bars stay."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute")


@dataclass(frozen=True)
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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


WORLDS = {
    "toy": WorldPreset("toy", "toyworld", "toyworld", True, 64, 32, "no", steps=40, rank=4, learning_rate=2e-3, batch_size=4,
                       sample_steps=10, guidance_scale=None),
    "sd15": WorldPreset("sd15", SD15_MODEL, SD15_CLIP, False, 512, 512, "fp16", steps=900, rank=1, learning_rate=1e-4, batch_size=1,
                        sample_steps=50, guidance_scale=7.5, seeds=list(range(8))),
}


def world_preset(world: str) -> WorldPreset:
    """The preset of `world` ('toy' or 'sd15'), with a clear error for anything else."""
    if world not in WORLDS:
        raise ValueError(f"world={world!r}: choose one of {sorted(WORLDS)} ('toy' runs on a CPU, 'sd15' needs a GPU)")
    return WORLDS[world]


def concept_config(concept: str | None = None, folder: str | Path | None = None, export_to: str | Path | None = None,
                   trigger: str | None = None, class_word: str | None = None, px: int = 64) -> Any:
    """A ConceptConfig from a folder (trigger / class word default to its concept.json), or from a toy concept
    exported (overwriting) to `export_to` at `px` pixels when no folder is given."""
    from catlab.config import ConceptConfig
    from catlab.toyworld.world import CONCEPTS, export_concept

    meta: dict[str, Any] = {}
    if folder is None:
        if concept not in CONCEPTS:
            raise ValueError(f"concept={concept!r}: choose a toy concept ({', '.join(CONCEPTS)}) or pass a concept folder")
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

    @property
    def mixed_precision(self) -> str:
        """The world's mixed precision on a GPU; full precision on a CPU."""
        return self.preset.mixed_precision if self.device == "cuda" else "no"

    @property
    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for generate_methods / evaluate: the sampling steps and the world's guidance scale."""
        return {"num_inference_steps": self.sample_steps, "guidance_scale": self.preset.guidance_scale}

    def load_concept(self, concept: str | None = None, folder: str | Path | None = None, trigger: str | None = None,
                     class_word: str | None = None, to: str = "concept") -> Any:
        """A ConceptConfig for `folder`, or for the toy `concept` exported to work/`to` at the world's concept size."""
        return concept_config(concept, folder, export_to=self.work / to, trigger=trigger, class_word=class_word,
                              px=self.preset.concept_px)


def setup_notebook(world: str, out_root: str | Path, name: str, concept: str | None = None, concept_folder: str | Path | None = None,
                   trigger: str | None = None, class_word: str | None = None, base_model: str | None = None,
                   device: str | None = None, quiet_notices: bool = True, **sizes: Any) -> Workbench:
    """Set up a notebook: the world's preset, a fresh work folder out_root/name (the notebook's own outputs from an
    earlier run are removed), the concept when one is given, and the run sizes (`SIZES`), where a value given here wins
    over the preset and None takes the preset's. Loads no model."""
    preset = world_preset(world)
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name={name!r}: give the notebook's name, a single folder name under out_root")
    filled = fill_sizes(preset, **sizes)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if quiet_notices:
        quiet()
    work = Path(out_root) / name
    if concept_folder is not None and work.resolve() in Path(concept_folder).expanduser().resolve().parents:
        raise ValueError(f"concept_folder={str(concept_folder)!r} lies in {work}, which this set-up clears: copy it elsewhere first")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wb = Workbench(world, preset, work, device, base_model or preset.base_model, **filled)
    if concept is not None or concept_folder is not None:
        wb.concept = wb.load_concept(concept, concept_folder, trigger, class_word)
    print(f"world {world!r}: base model {wb.base_model!r} on {device}; {wb.steps} steps, rank {wb.rank}, lr {wb.learning_rate:g}, "
          f"batch {wb.batch_size}" + (f"; {wb.concept}" if wb.concept else ""))
    return wb


def make_train_config(wb: Workbench, output_dir: str, *, regime: str, concepts: list | None = None, **fields: Any) -> Any:
    """A TrainConfig for the workbench: its base model, concept, run sizes, resolution and precision, written to
    work/output_dir, with no checkpoints or sample grids during training. Any field given here (not None) wins."""
    from catlab.config import TrainConfig

    preset = dict(base_model=wb.base_model, concepts=concepts or ([wb.concept] if wb.concept else []), output_dir=str(wb.work / output_dir),
                  regime=regime, resolution=wb.preset.resolution, mixed_precision=wb.mixed_precision, steps=wb.steps, rank=wb.rank,
                  learning_rate=wb.learning_rate, batch_size=wb.batch_size, validation_seeds=list(wb.seeds), validate_every=0,
                  checkpoint_every=0)
    return TrainConfig(**{**preset, **{k: v for k, v in fields.items() if v is not None}})
