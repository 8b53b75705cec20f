"""The state of one training run: what `training.loop.train` builds once and `training.loop.step(run, i)` advances.

One object instead of a dozen loose arguments: a step reads the config, the models, the data and the optimiser from
here and appends its logs to `run.history`; a checkpoint saves what is here and a resumed run rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from catlab.config import TrainConfig
from catlab.models import adapters_disabled
from catlab.tensors import encode_prompts


class TextStates:
    """Caption -> text-encoder hidden states (L, D). A frozen encoder encodes each caption once and caches it; an
    encoder that trains (train_text_encoder) is run on every batch, so its gradients flow. `base` gives the base
    model's states (the encoder's adapters off), cached: CAT's target must not see the encoder being trained."""

    def __init__(self, tokenizer, text_encoder, device, frozen: bool, trained=None):
        self.tok, self.te, self.device, self.frozen = tokenizer, text_encoder, device, frozen
        # what a forward with gradients goes through: accelerate's wrapper of the encoder (DDP under several processes)
        self.trained = trained if trained is not None else text_encoder
        self.cache: dict[str, torch.Tensor] = {}
        self.base_cache: dict[str, torch.Tensor] = {}

    def __call__(self, *caption_lists: list[str]) -> tuple[torch.Tensor, ...]:
        """One (B_k, L, D) tensor per list of captions."""
        if not self.frozen:  # one forward for all lists: the encoder's gradients come from every row
            captions = [c for cs in caption_lists for c in cs]
            hs = encode_prompts(self.tok, self.trained, captions, self.device)  # (sum B_k, L, D)
            return tuple(hs.split([len(cs) for cs in caption_lists]))
        return tuple(self._cached(cs, self.cache) for cs in caption_lists)

    def base(self, *caption_lists: list[str]) -> tuple[torch.Tensor, ...]:
        """The base text encoder's states, one (B_k, L, D) tensor per list: the same as calling a frozen encoder."""
        if self.frozen:
            return self(*caption_lists)
        with adapters_disabled(self.te):
            return tuple(self._cached(cs, self.base_cache) for cs in caption_lists)

    @torch.no_grad()
    def _cached(self, captions: list[str], cache: dict[str, torch.Tensor]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in cache]
        if new:
            cache.update(zip(new, encode_prompts(self.tok, self.te, new, self.device)))  # (n, L, D)
        return torch.stack([cache[c] for c in captions])  # (B, L, D)


@dataclass
class TrainingRun:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    out: Path  # the run folder: config.yaml, metrics.jsonl, checkpoints/, validation/, adapter/
    acc: Any  # accelerate.Accelerator: device, mixed precision, several processes, trackers
    pipe: Any  # the base pipeline; its UNet carries the LoRA being trained
    unet: torch.nn.Module  # as accelerate prepared it (DDP-wrapped on several GPUs), compiled with compile_unet
    noise_scheduler: Any  # DDPM with the base model's schedule: what training noises with
    dataset: Any  # data.dataset.ConceptDataset: images, trigger captions and trigger-free captions
    text: TextStates
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    params: list[torch.nn.Parameter]  # the trainable (LoRA) parameters: what is clipped and optimised
    weight_dtype: torch.dtype  # of the frozen weights: fp32, or fp16/bf16 under mixed precision
    class_images: torch.Tensor | None = None  # (N, 3, R, R): the base model's class images (DreamBooth; CAT anchors)
    class_prompts: list[str] = field(default_factory=list)  # the class prompt of each class image
    class_images_s: float = 0.0  # time spent drawing the class images: DreamBooth's up-front cost
    history: list[dict] = field(default_factory=list)  # one logs dict per step done
    last_checkpoint: Path | None = None  # where a diverged run can resume from

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def unwrapped_unet(self) -> torch.nn.Module:
        """The UNet itself (pipe.unet): without DDP's wrapper, and eager (torch.compile's wrapper is for training)."""
        return self.acc.unwrap_model(getattr(self.unet, "_orig_mod", self.unet))

    @property
    def trained_models(self) -> list[torch.nn.Module]:
        """What the optimiser trains, as prepared: the UNet, and the text encoder when its LoRA or the trigger's
        embedding trains."""
        return [self.unet] + ([self.text.trained] if not self.text.frozen else [])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one training latent."""
        side = self.dataset.resolution // self.pipe.vae_scale_factor
        return self.pipe.vae.config.latent_channels, side, side

    @property
    def anchored(self) -> bool:
        """CAT with its term on the base model's class images (`cat_anchor: class`, or `both`: beside some of the
        concept's) instead of on the concept's alone."""
        return self.cfg.regime == "cat" and self.cfg.needs_class_images
