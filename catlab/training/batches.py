"""What one optimiser update trains on, drawn once for the whole update and cut into micro-batches.

Every random choice of update i (which concept images, which class images, which captions are dropped, the VAE
posterior's sample, the noise and the timesteps) comes from generators seeded by (seed, i) alone, for the *global*
batch: all processes and all accumulation micro-steps together. The global batch has S = processes x
gradient_accumulation slots of `batch_size` concept rows (and as many class-image rows per slot as the regime takes);
the micro-batch `micro` of process `rank` is slot rank * gradient_accumulation + micro and takes that slot's rows.

So the draws do not depend on how the update is split: two processes of batch 2, one process accumulating two
micro-batches of 2, and one process of batch 4 train on the same rows with the same noise, and with one process and
no accumulation the draw is exactly what catlab drew before it split updates (the same generators, in the same
order). A resumed run replays the same updates, since nothing but (seed, i) decides them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from catlab.config import TrainConfig, share_row_count

# salts of the generators of one update: numpy's for the rows, torch's for posterior samples, noise and timesteps;
# LoRA dropout uses odd salts, one per slot (dropout_seed)
ROWS_SALT, NOISE_SALT = 0, 2


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """The seed of one generator of update `step`."""
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1)


def dropout_seed(seed: int, step: int, slot: int) -> int:
    """The global torch RNG's seed for slot `slot` of update `step` (LoRA dropout draws from it)."""
    return step_seed(seed, step, 1 + 2 * slot)


def extra_rows(cfg: TrainConfig) -> int:
    """Class-image rows per slot beside its batch_size concept rows: CAT's anchors (cat_anchor "class"; cat_share of
    the batch) or DreamBooth's class images (prior_share of the batch); 0 for the other regimes."""
    if not cfg.needs_class_images:
        return 0
    return share_row_count(cfg.batch_size, cfg.cat_share if cfg.regime == "cat" else cfg.prior_share)


@dataclass
class SlotBatch:
    """One micro-batch, before noising: what a slot's rows show and say."""

    pixels: torch.Tensor  # (rows + extra, 3, R, R): concept images, then class images (CAT's anchors or DreamBooth's)
    captions: list[str]  # what the adapted model is conditioned on: the trigger captions (+ DreamBooth's class prompts)
    trigger_free: list[str]  # CAT's rows: trigger-free captions or the anchors' class prompts; "" (cat_null_share)
    n_concept: int  # concept rows, first in `pixels`


@dataclass
class UpdateDraw:
    """Everything random in one update, for all its slots. Rows: every slot's concept rows first, then every slot's
    class-image rows (with one slot: concept rows, then class-image rows, as one batch)."""

    slots: int  # S: micro-batches in the update, over all processes
    rows: int  # concept rows per slot (batch_size)
    extra: int  # class-image rows per slot (0: none)
    items: np.ndarray  # (S * rows,) dataset index of each concept row
    class_ids: np.ndarray  # (S * extra,) class-image index of each class-image row
    dropped: np.ndarray  # (S * rows,) bool: concept rows trained on the empty caption (caption_dropout)
    eps_latent: torch.Tensor  # (S * (rows + extra), C, h, w): standard normal for the VAE posterior's sample
    noise: torch.Tensor  # (S * (rows + extra), C, h, w): the diffusion noise, offset included
    timesteps: torch.Tensor  # (S * (rows + extra),)

    def concept(self, slot: int) -> slice:
        """Slot `slot`'s concept rows in `items` and `dropped`."""
        return slice(slot * self.rows, (slot + 1) * self.rows)

    def class_rows(self, slot: int) -> slice:
        """Slot `slot`'s class-image rows in `class_ids`."""
        return slice(slot * self.extra, (slot + 1) * self.extra)

    def tensor_rows(self, slot: int) -> torch.Tensor:
        """Slot `slot`'s rows in `eps_latent`, `noise` and `timesteps`: its concept rows, then its class-image rows."""
        first_extra = self.slots * self.rows + slot * self.extra
        return torch.cat(
            [
                torch.arange(slot * self.rows, (slot + 1) * self.rows),
                torch.arange(first_extra, first_extra + self.extra),
            ]
        )  # (rows + extra,)


def draw_update(
    cfg: TrainConfig,
    step: int,
    slots: int,
    n_items: int,
    n_class_images: int,
    latent_shape: tuple[int, int, int],
    n_timesteps: int,
) -> UpdateDraw:
    """Update `step`'s draws for `slots` micro-batches; `latent_shape` = (C, h, w) of one latent."""
    b, e = cfg.batch_size, extra_rows(cfg) if n_class_images else 0
    rng = np.random.default_rng(step_seed(cfg.seed, step, ROWS_SALT))
    # without replacement when possible: repeats would share one augmentation
    items = rng.choice(n_items, size=slots * b, replace=slots * b > n_items)
    class_ids = rng.integers(n_class_images, size=slots * e) if e else np.zeros(0, dtype=np.int64)
    dropped = rng.random(slots * b) < cfg.caption_dropout if cfg.caption_dropout else np.zeros(slots * b, dtype=bool)
    g = torch.Generator().manual_seed(step_seed(cfg.seed, step, NOISE_SALT))
    n = slots * (b + e)
    eps_latent = torch.randn((n, *latent_shape), generator=g)  # (n, C, h, w)
    noise = torch.randn((n, *latent_shape), generator=g)  # (n, C, h, w)
    timesteps = torch.randint(0, n_timesteps, (n,), generator=g)
    if cfg.noise_offset:  # offset noise (Guttenberg 2023): a per-image, per-channel shift the model must also remove
        noise = noise + cfg.noise_offset * torch.randn((n, latent_shape[0], 1, 1), generator=g)  # (n, C, h, w)
    return UpdateDraw(slots, b, e, items, class_ids, dropped, eps_latent, noise, timesteps)
