"""One dataclass config for a training run, with commented defaults, and YAML load/save.

Defaults are the toy world's CPU preset; `TrainConfig.sd15()` gives the authors' Stable Diffusion 1.5 setting.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catlab.config_checks import anchor_problems, share_problems, trigger_embedding_problems, type_problems
from catlab.recipes import RECIPES, recipe_overrides  # noqa: F401  (re-exported: catlab.config.RECIPES)

REGIMES = ("lora", "dreambooth", "cat")  # plain LoRA, DreamBooth prior preservation, Contrastive Adapter Training
TRIGGER_FREE = ("drop", "replace")  # how the trigger-free caption is made from a training caption
# spellings of catlab 0.1, still read (with a note): old regime names, and cat_prompt -> trigger_free
RENAMED_REGIMES = {"none": "lora", "ppl": "dreambooth"}
RENAMED_FIELDS = {"cat_prompt": ("trigger_free", {"remove": "drop", "class": "replace"})}
TRACKERS = ("none", "tensorboard", "wandb")


@dataclass
class ConceptConfig:
    folder: str  # images + captions (per-image .txt, or captions.txt / captions.jsonl)
    trigger: str  # rare token that names the concept, e.g. "sks"
    class_word: str  # what the concept is, e.g. "circle"; used for class prompts and prior images


@dataclass
class TrainConfig:
    # --- what to train on
    base_model: str = "toyworld"  # "toyworld", a local diffusers folder, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5
    # or one .safetensors checkpoint as civitai and the webuis share them (never a pickled .ckpt / .pt / .bin)
    variant: str | None = None  # "fp16": the hub's half-precision weight files, half the download; None = the full ones
    revision: str | None = None  # a hub branch, tag or commit of base_model: the exact weights, recorded in the adapter
    vae: str | None = None  # replaces the base model's VAE: a VAE folder, hub id (stabilityai/sd-vae-ft-mse) or file
    # for a single-file base_model (or vae): the diffusers folder or hub id whose configs describe it; None = diffusers
    # infers the model and reads its configs from the hub once (offline: pass a local folder)
    single_file_config: str | None = None
    concepts: list[ConceptConfig] = field(default_factory=list)
    output_dir: str = "runs/train"  # never overwritten silently: resume it or pick another
    resolution: int | None = None  # None = the base model's native size (32 px toy world, 512 px SD 1.5)
    center_crop: bool = False  # the authors used random crops
    random_flip: bool = True
    # --- the regime
    regime: str = "cat"  # "lora" = plain LoRA, "dreambooth" = DreamBooth prior preservation, "cat" = CAT
    cat_lambda: float = 1.0  # weight of the CAT term; the authors' configs use 1.0 (6.0 in one)
    # the trigger-free caption (CAT's c_free): "drop" the trigger, "a sks circle" -> "a circle" (the authors), or
    # "replace" it by the class word, "sks on a rug" -> "circle on a rug"
    trigger_free: str = "drop"
    cat_every: int = 1  # amortised CAT: apply the term every k-th step only (k=1: every step), scaled by k
    # a schedule for λ: over this share of the updates λ rises linearly from 0 to cat_lambda, so the adapter first
    # learns the concept as plain LoRA does and the term then pulls the class back (0: λ from the first update)
    cat_lambda_warmup: float = 0.0
    # share of each batch whose rows also carry the CAT term (with cat_anchor "class": anchor images per step, as a
    # share of batch_size); below 1 a CAT step costs less (docs/training.md, "Cheaper CAT")
    cat_share: float = 1.0
    cat_null_share: float = (
        0.0  # share of the CAT rows whose trigger-free caption is "" (CFG's unconditional branch, see docs/training.md)
    )
    # where the CAT term looks: "concept" = the concept's own noisy latents (the paper); "class" = noisy latents of
    # images the base model drew for the class prompt (generated once, like DreamBooth's), which is where class
    # prompts go at sampling time (docs/training.md); "both" = the first cat_share of the concept's latents and the
    # class images together, so the term also holds the trigger-free caption where the concept's images are
    cat_anchor: str = "concept"
    # > 1: the CAT term holds the *guided* class prediction eps("") + s * (eps(c_free) - eps("")) at this guidance
    # scale (use the sampling one), so the adapter may move eps("") if eps(c_free) moves with it (docs/training.md);
    # 0: the paper's term on eps(c_free) alone. Instead of cat_null_share, not with it
    cat_guidance: float = 0.0
    prior_loss_weight: float = 1.0  # DreamBooth's default
    # DreamBooth's class images per step, as a share of batch_size: 1 = one per concept image (DreamBooth); 0.5 gives
    # it as many of the base model's class images per step as CAT's anchors at cat_share 0.5 (docs/training.md)
    prior_share: float = 1.0
    num_class_images: int = 50  # prior images generated once by the base model and cached
    class_prompt: str | None = None  # default "a {class_word}"
    # more prompts whose base-model images join the class images, for DreamBooth's prior and CAT's class anchors alike:
    # the term holds the base model there too, not only on the concept's class (docs/training.md, "Anchor prompts")
    anchor_prompts: list[str] = field(default_factory=list)
    class_images_dir: str | None = None  # default <output_dir>/class_images
    # --- the adapter
    rank: int = 4  # the authors used rank 1 on SD 1.5; 4 is peft's and diffusers' usual default
    lora_alpha: float | None = None  # None = rank (scale 1)
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"]
    )  # all attention, as the authors
    train_text_encoder: bool = False  # a LoRA on the text encoder too; CAT's target keeps the base one
    # > 0: the trigger word's own token embedding trains beside the LoRA at this rate (pivotal tuning), so the concept
    # has a place in the caption of its own; saved as trigger_embeddings.safetensors (docs/training.md)
    trigger_embedding_lr: float = 0.0
    # where the trigger's embedding starts (textual inversion's initializer token, Gal et al. 2022): "" = the trigger's
    # own row; "{class}" = each concept's class word's row; any other word = that word's row. A trained word's row is
    # one the text encoder carries forward, which an untrained trigger row is not (docs/toyworld.md)
    trigger_embedding_init: str = ""
    # share of the updates, at the start, in which the trigger's embedding trains alone (the LoRA's gradients are
    # dropped): pivotal tuning's two phases (cloneofsimo/lora's PTI: textual inversion first, then LoRA and embedding
    # together), so that the concept has its place in the caption before CAT's term meets the LoRA. 0 = both at once
    trigger_embedding_first: float = 0.0
    # --- optimisation
    steps: int = 300  # optimiser updates (not micro-batches); every interval below counts them too
    batch_size: int = 4  # rows per micro-batch per process
    # micro-batches per update: one update averages batch_size x gradient_accumulation x processes rows
    gradient_accumulation: int = 1
    learning_rate: float = 2e-3  # toy world; SD 1.5 LoRA usually 1e-4
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name; the authors used constant
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # clips the trainable parameters (the authors' code clipped frozen ones by mistake)
    snr_gamma: float | None = None  # Min-SNR weighting (Hang et al. 2023); None = plain MSE, as the authors
    caption_dropout: float = 0.0  # share of concept rows trained on the empty caption, so guidance keeps a prior
    noise_offset: float = 0.0  # offset noise (Guttenberg 2023): + offset * randn(B, C, 1, 1); learns mean brightness
    mixed_precision: str = "no"  # "fp16" / "bf16" on a GPU
    gradient_checkpointing: bool = False
    compile_unet: bool = False  # torch.compile the UNet: faster GPU steps after a minutes-long first compile
    seed: int = 0
    # --- bookkeeping
    checkpoint_every: int = 100  # 0 = only at the end
    checkpoints_total_limit: int | None = None  # keep only the newest n checkpoints (None = keep all)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder: continue from there (as --resume does)
    report_to: str = "none"  # experiment tracker through accelerate: "none", "tensorboard" or "wandb" (install it)
    validate_every: int = 100  # 0 = never
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # drawn for every concept, {trigger} and {class} filled in (expand_validation_prompts); the default shows the
    # concept and whether its class still looks like the base model's
    validation_prompts: list[str] = field(default_factory=lambda: ["a {trigger} {class}", "a {class}"])
    validation_negative_prompt: str | None = None  # e.g. "blurry, lowres"; None = none, as the pipelines' default
    validation_steps: int | None = None  # None = the base model's sampling steps (catlab_sampling.json, else 50)
    validation_guidance: float | None = None  # None = the base model's guidance scale (3 in the toy world, 7.5 SD 1.5)
    validation_base_row: bool = False  # also draw each prompt with the adapter off: shows what training changed
    log_every: int = 10

    def __post_init__(self):
        if self.regime in RENAMED_REGIMES:
            _note_rename(f"regime: {self.regime}", f"regime: {RENAMED_REGIMES[self.regime]}")
            self.regime = RENAMED_REGIMES[self.regime]
        self.concepts = [c if isinstance(c, ConceptConfig) else ConceptConfig(**c) for c in self.concepts]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every bad field and how to fix it."""
        problems = type_problems(self)
        if problems:  # the checks below assume the right types
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))
        if self.regime not in REGIMES:
            problems.append(f"regime={self.regime!r}: choose one of {REGIMES}")
        if self.trigger_free not in TRIGGER_FREE:
            problems.append(
                f"trigger_free={self.trigger_free!r}: choose 'drop' (the authors) or 'replace' (by the class word)"
            )
        for name in ("steps", "batch_size", "rank", "gradient_accumulation", "cat_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.cat_anchor not in ("concept", "class", "both"):
            problems.append(
                f"cat_anchor={self.cat_anchor!r}: choose 'concept' (the paper), 'class' (the base model's class images)"
                " or 'both'"
            )
        problems += anchor_problems(self)
        if self.cat_guidance and (self.cat_guidance <= 1 or self.cat_null_share):
            problems.append(
                f"cat_guidance={self.cat_guidance}: use 0 (off) or the sampling guidance scale (> 1), with cat_null_share 0 "
                f"(it is {self.cat_null_share}): the guided term holds the empty caption itself"
            )
        problems += share_problems(self)
        for name in (
            "cat_lambda",
            "prior_loss_weight",
            "learning_rate",
            "lora_dropout",
            "noise_offset",
            "trigger_embedding_lr",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be >= 0")
        problems += trigger_embedding_problems(self)
        if not 0.0 <= self.caption_dropout < 1.0:
            problems.append(
                f"caption_dropout={self.caption_dropout}: must be at least 0 and below 1 (a share of the rows)"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            problems.append(f"mixed_precision={self.mixed_precision!r}: choose 'no', 'fp16' or 'bf16'")
        if self.report_to not in TRACKERS:
            problems.append(f"report_to={self.report_to!r}: choose one of {TRACKERS}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            problems.append(
                f"checkpoints_total_limit={self.checkpoints_total_limit}: must be >= 1, or null to keep every checkpoint"
            )
        problems += _validation_problems(self)
        if problems:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))

    @classmethod
    def sd15(cls, **overrides) -> TrainConfig:
        """The authors' SD 1.5 setting: rank 1, lr 1e-4, batch 1, 900 steps, 512 px, constant LR."""
        base = dict(
            base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
            rank=1,
            learning_rate=1e-4,
            batch_size=1,
            steps=900,
            checkpoint_every=150,
            validate_every=150,
            resolution=512,
            mixed_precision="fp16",
        )
        return cls(**{**base, **overrides})

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> TrainConfig:
        """A config from a named recipe (`RECIPES`), with `overrides` on top."""
        return cls(**{**recipe_overrides(name), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def text_encoder_trains(self) -> bool:
        """Whether the text encoder's output changes in training: its LoRA, or the trigger's own embedding."""
        return self.train_text_encoder or self.trigger_embedding_lr > 0

    @property
    def needs_class_images(self) -> bool:
        """DreamBooth trains on the base model's class images; CAT with `cat_anchor: class` puts its term on them."""
        return self.regime == "dreambooth" or (self.regime == "cat" and self.cat_anchor in ("class", "both"))

    def class_prompts(self) -> list[str]:
        """What the class images are drawn for: `class_prompt`, or "a {class_word}" for each concept, and the
        `anchor_prompts` (sorted, once each)."""
        return sorted({self.class_prompt or f"a {c.class_word}" for c in self.concepts} | set(self.anchor_prompts))

    def loading_options(self) -> dict[str, str]:
        """The fields that say how to load base_model, as `catlab.models.load_base` takes them (only those set)."""
        given = {"variant": self.variant, "revision": self.revision, "vae": self.vae, "config": self.single_file_config}
        return {k: v for k, v in given.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        for old, (new, values) in RENAMED_FIELDS.items():
            if old in d and new not in d:
                value = d.pop(old)
                _note_rename(f"{old}: {value}", f"{new}: {values.get(value, value)}")
                d[new] = values.get(value, value)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:  # a concept without folder / trigger / class_word
            raise ValueError(f"invalid training config: {e}") from e


def fill_prompt(template: str, trigger: str, class_word: str) -> str:
    """'a {trigger} {class} on a beach' -> 'a sks teapot on a beach'; ValueError for any other {placeholder}."""
    try:
        return template.format(trigger=trigger, **{"class": class_word})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"prompt template {template!r}: only {{trigger}} and {{class}} may stand in braces ({e!r}); "
            "write literal braces as {{ }}"
        ) from e


def expand_validation_prompts(templates: list[str], concepts: list[ConceptConfig]) -> list[str]:
    """Every template filled in for every concept, in order, each prompt once: what `validate` draws per seed."""
    prompts = [fill_prompt(t, c.trigger, c.class_word) for c in concepts for t in templates]
    return list(dict.fromkeys(prompts))


def _validation_problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with the validation settings: templates that cannot be filled in, steps or guidance out of
    range."""
    problems = []
    if not cfg.validation_prompts:
        problems.append("validation_prompts=[]: give at least one, e.g. ['a {trigger} {class}', 'a {class}']")
    for t in cfg.validation_prompts:
        try:
            fill_prompt(t, "sks", "thing")
        except ValueError as e:
            problems.append(f"validation_prompts: {e}")
    if cfg.validation_steps is not None and cfg.validation_steps < 1:
        problems.append(f"validation_steps={cfg.validation_steps}: must be >= 1, or null for the base model's own")
    if cfg.validation_guidance is not None and cfg.validation_guidance < 1:
        problems.append(
            f"validation_guidance={cfg.validation_guidance}: must be >= 1 (1 = no classifier-free "
            "guidance), or null for the base model's own"
        )
    return problems


def share_row_count(batch_size: int, share: float) -> int:
    """Rows a share of the batch size stands for (at least one): the rows that carry CAT's term (`cat_share`; with
    cat_anchor "class", the class images per step) or DreamBooth's class images per step (`prior_share`)."""
    return max(1, round(batch_size * share))


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML (or JSON) run config."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        data = load_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config fields, got {type(data).__name__}")
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from e


def load_yaml(text: str) -> Any:
    """YAML as PyYAML's safe loader reads it, except that `1e-4` is the number it looks like (YAML 1.2), not the
    string YAML 1.1 makes of it: learning rates are written that way."""
    import yaml

    return yaml.load(text, Loader=_yaml12_floats_loader())


@functools.cache
def _yaml12_floats_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader plus YAML 1.2's exponent floats without a dot (1e-4, 5E3); 1.1 needs 1.0e-4."""

    exponent_float = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789"))
    return Loader


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config atomically."""
    import yaml

    from catlab.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _note_rename(old: str, new: str) -> None:
    warnings.warn(
        f"config: {old!r} is read as {new!r} (renamed in catlab 0.2; the old spelling keeps working)",
        FutureWarning,
        stacklevel=3,
    )
