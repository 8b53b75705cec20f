"""Set-up and world presets: `quiet()` for library notices, the SD 1.5 model names, the `WorldPreset` of each world
(the CPU toy world and Stable Diffusion 1.5), and `concept_config` for a concept folder or an exported toy concept.
"""

from __future__ import annotations

import json
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
