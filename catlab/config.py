"""One dataclass config for a training run, with commented defaults, and YAML load/save.

Defaults are the toy world's CPU preset; `TrainConfig.sd15()` gives the authors' Stable Diffusion 1.5 setting.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGIMES = ("lora", "dreambooth", "cat")  # plain LoRA, DreamBooth prior preservation, Contrastive Adapter Training
TRIGGER_FREE = ("drop", "replace")  # how the trigger-free caption is made from a training caption
# spellings of catlab 0.1, still read (with a note): old regime names, and cat_prompt -> trigger_free
RENAMED_REGIMES = {"none": "lora", "ppl": "dreambooth"}
RENAMED_FIELDS = {"cat_prompt": ("trigger_free", {"remove": "drop", "class": "replace"})}
TRACKERS = ("none", "tensorboard", "wandb")
_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "str": (str, os.PathLike), "bool": (bool,)}  # numpy numbers too


@dataclass
class ConceptConfig:
    folder: str  # images + captions (per-image .txt, or captions.txt / captions.jsonl)
    trigger: str  # rare token that names the concept, e.g. "sks"
    class_word: str  # what the concept is, e.g. "circle"; used for class prompts and prior images


@dataclass
class TrainConfig:
    # --- what to train on
    base_model: str = "toyworld"  # "toyworld", a local diffusers folder, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5
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
    # share of each batch whose rows also carry the CAT term (with cat_anchor "class": anchor images per step, as a
    # share of batch_size); below 1 a CAT step costs less (docs/training.md, "Cheaper CAT")
    cat_share: float = 1.0
    cat_null_share: float = 0.0  # share of the CAT rows whose trigger-free caption is "" (CFG's unconditional branch, see docs/training.md)
    # where the CAT term looks: "concept" = the concept's own noisy latents (the paper); "class" = noisy latents of
    # images the base model drew for the class prompt (generated once, like DreamBooth's), which is where class
    # prompts go at sampling time (docs/training.md)
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
    class_images_dir: str | None = None  # default <output_dir>/class_images
    # --- the adapter
    rank: int = 4  # the authors used rank 1 on SD 1.5; 4 is peft's and diffusers' usual default
    lora_alpha: float | None = None  # None = rank (scale 1)
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # all attention, as the authors
    train_text_encoder: bool = False  # CAT's target assumes the text encoder is the base model's
    # --- optimisation
    steps: int = 300
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float = 2e-3  # toy world; SD 1.5 LoRA usually 1e-4
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name; the authors used constant
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # clips the trainable parameters (the authors' code clipped frozen ones by mistake)
    snr_gamma: float | None = None  # Min-SNR weighting (Hang et al. 2023); None = plain MSE, as the authors
    mixed_precision: str = "no"  # "fp16" / "bf16" on a GPU
    gradient_checkpointing: bool = False
    seed: int = 0
    # --- bookkeeping
    checkpoint_every: int = 100  # 0 = only at the end
    checkpoints_total_limit: int | None = None  # keep only the newest n checkpoints (None = keep all)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder: continue from there (as --resume does)
    report_to: str = "none"  # experiment tracker through accelerate: "none", "tensorboard" or "wandb" (install it)
    validate_every: int = 100  # 0 = never
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    log_every: int = 10

    def __post_init__(self):
        if self.regime in RENAMED_REGIMES:
            _note_rename(f"regime: {self.regime}", f"regime: {RENAMED_REGIMES[self.regime]}")
            self.regime = RENAMED_REGIMES[self.regime]
        self.concepts = [c if isinstance(c, ConceptConfig) else ConceptConfig(**c) for c in self.concepts]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every bad field and how to fix it."""
        problems = _type_problems(self)
        if problems:  # the checks below assume the right types
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))
        if self.regime not in REGIMES:
            problems.append(f"regime={self.regime!r}: choose one of {REGIMES}")
        if self.trigger_free not in TRIGGER_FREE:
            problems.append(f"trigger_free={self.trigger_free!r}: choose 'drop' (the authors) or 'replace' (by the class word)")
        for name in ("steps", "batch_size", "rank", "gradient_accumulation", "cat_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.cat_anchor not in ("concept", "class"):
            problems.append(f"cat_anchor={self.cat_anchor!r}: choose 'concept' (the paper) or 'class' (the base model's class images)")
        if self.cat_guidance and (self.cat_guidance <= 1 or self.cat_null_share):
            problems.append(f"cat_guidance={self.cat_guidance}: use 0 (off) or the sampling guidance scale (> 1), with cat_null_share 0 "
                            f"(it is {self.cat_null_share}): the guided term holds the empty caption itself")
        if not 0.0 < self.cat_share <= 1.0:
            problems.append(f"cat_share={self.cat_share}: must be above 0 and at most 1 (a share of the batch; 1 = every row)")
        if not 0.0 < self.prior_share <= 1.0:
            problems.append(f"prior_share={self.prior_share}: must be above 0 and at most 1 (class images per step as a share of "
                            "batch_size; 1 = one per concept image)")
        if not 0.0 <= self.cat_null_share <= 1.0:
            problems.append(f"cat_null_share={self.cat_null_share}: must be between 0 and 1 (a share of the batch)")
        for name in ("cat_lambda", "prior_loss_weight", "learning_rate", "lora_dropout"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be >= 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            problems.append(f"mixed_precision={self.mixed_precision!r}: choose 'no', 'fp16' or 'bf16'")
        if self.report_to not in TRACKERS:
            problems.append(f"report_to={self.report_to!r}: choose one of {TRACKERS}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            problems.append(f"checkpoints_total_limit={self.checkpoints_total_limit}: must be >= 1, or null to keep every checkpoint")
        if problems:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))

    @classmethod
    def sd15(cls, **overrides) -> TrainConfig:
        """The authors' SD 1.5 setting: rank 1, lr 1e-4, batch 1, 900 steps, 512 px, constant LR."""
        base = dict(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", rank=1, learning_rate=1e-4, batch_size=1,
                    steps=900, checkpoint_every=150, validate_every=150, resolution=512, mixed_precision="fp16")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


def share_row_count(batch_size: int, share: float) -> int:
    """Rows a share of the batch size stands for (at least one): the rows that carry CAT's term (`cat_share`; with
    cat_anchor "class", the class images per step) or DreamBooth's class images per step (`prior_share`)."""
    return max(1, round(batch_size * share))


def _type_problems(cfg) -> list[str]:
    """Fields whose value has the wrong type ('steps: ten', '--set rank=true'), from the annotations."""
    problems = []
    for f in dataclasses.fields(cfg):
        v, kinds = getattr(cfg, f.name), [k.strip() for k in str(f.type).split("|")]
        if v is None and "None" in kinds:
            continue
        if kinds[0].startswith("list[") and isinstance(v, (list, tuple)):
            inner = _TYPES.get(kinds[0][5:-1])
            if inner is None or all(isinstance(x, inner) and not (isinstance(x, bool) and kinds[0] != "list[bool]") for x in v):
                continue
        elif kinds[0] in _TYPES and isinstance(v, _TYPES[kinds[0]]) and not (isinstance(v, bool) and kinds[0] != "bool"):
            continue
        problems.append(f"{f.name}={v!r}: expected {' or '.join(k.replace('None', 'null') for k in kinds)}")
    return problems


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML (or JSON) run config."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config fields, got {type(data).__name__}")
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from e


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config atomically."""
    import yaml

    from catlab.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _note_rename(old: str, new: str) -> None:
    warnings.warn(f"config: {old!r} is read as {new!r} (renamed in catlab 0.2; the old spelling keeps working)",
                  FutureWarning, stacklevel=3)
