"""Toy world v2.1's "open_colours" stage: the autoencoder learns to reproduce colours the world lacks.

The v2 VAE had only seen the world's 8 colours and 3 backdrops and round-tripped bronze to crimson and navy to
grey, so no adapter could draw those concepts. This stage fine-tunes it on world shapes in any RGB colour and size
while anchoring the latents of world images, so the UNet is not retrained (docs/toyworld.md).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from catlab.tensors import pixels_to_unit_range
from catlab.toyworld.stage_checkpoints import resume_stage, save_stage_checkpoint

if TYPE_CHECKING:
    from catlab.toyworld.pretrain import PretrainConfig


def draw_open_colour_batch(
    rng: np.random.Generator, n: int, pattern_share: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n world images and n open-colour images (any RGB object on a world or any-RGB backdrop), in [-1, 1]; each (n, 3, 32, 32).
    A `pattern_share` of the open-colour objects is two-coloured (halves or stripes, the second colour open too)."""
    from catlab.toyworld.world import draw_shape, sample_open_colour_spec, sample_spec, with_open_pattern

    world = [sample_spec(rng) for _ in range(n)]
    open_ = [sample_open_colour_spec(rng) for _ in range(n)]
    if pattern_share > 0:  # drawn only then, so the shipped recipe (share 0) sees the same batches as before
        open_ = [with_open_pattern(rng, s) if rng.random() < pattern_share else s for s in open_]
    return tuple(pixels_to_unit_range(np.stack([np.asarray(draw_shape(s)) for s in specs])) for specs in (world, open_))


def train_open_colours(cfg: PretrainConfig, vae, work: Path):
    """Open colours: fine-tune the whole VAE to reconstruct objects and backdrops of any RGB colour, while the
    latents of world images are held where the pretrained encoder put them (an L2 anchor on the posterior means,
    scaled as the UNet sees them), so the UNet's vocabulary keeps its meaning. A decoder-only fine-tune was tried
    first and cannot work: the pretrained encoder maps bronze and navy onto the latents of world colours."""
    anchor_encoder = copy.deepcopy(vae.encoder).requires_grad_(False).eval()
    anchor_quant = copy.deepcopy(vae.quant_conv).requires_grad_(False).eval()
    scale = vae.config.scaling_factor
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.open_colour_lr, weight_decay=0.0)
    # cosine decay to 0, so the weights settle (a constant lr left the last steps' noise in the colours)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, cfg.open_colour_steps))))
    )
    ckpt = work / "open_colours.ckpt"
    start = resume_stage(ckpt, {"vae": vae, "opt": opt, "lr": lr_sched})
    rng = np.random.default_rng(cfg.seed + 9)
    for _ in range(start):  # replay the draws so a resumed run sees the same batches
        draw_open_colour_batch(rng, cfg.vae_batch // 2, cfg.open_colour_pattern_share)
    log = (work / "open_colours_log.jsonl").open("a")
    bar = tqdm(range(start, cfg.open_colour_steps), desc="open colours", initial=start, total=cfg.open_colour_steps)
    for step in bar:
        world, open_ = draw_open_colour_batch(
            rng, cfg.vae_batch // 2, cfg.open_colour_pattern_share
        )  # each (B/2, 3, 32, 32)
        x = torch.cat([world, open_])
        post = vae.encode(x).latent_dist
        rec = F.mse_loss(vae.decode(post.sample()).sample, x)
        with torch.no_grad():
            held = anchor_quant(anchor_encoder(world)).chunk(2, dim=1)[
                0
            ]  # (B/2, 4, 16, 16): the pretrained posterior means
        anchor = F.mse_loss(post.mean[: len(world)] * scale, held * scale)
        loss = rec + cfg.open_colour_anchor * anchor + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        bar.set_postfix(mse=f"{rec.item():.4f}", anchor=f"{anchor.item():.4f}")
        if step % 25 == 0:
            log.write(json.dumps({"step": step, "mse": rec.item(), "anchor": anchor.item()}) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0:
            save_stage_checkpoint(ckpt, step + 1, {"vae": vae, "opt": opt, "lr": lr_sched})
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    """encode -> decode (posterior mode) of images in [-1, 1]: the best any adapter can draw, since it only moves latents."""
    return vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)


def reconstruction_error(vae, x: torch.Tensor) -> float:
    """Mean absolute pixel error (0-255 scale) of a round trip."""
    return float((round_trip(vae, x) - x).abs().mean() * 127.5)


def open_colour_vae(cfg: PretrainConfig, out: Path, work: Path) -> dict:
    """The "open_colours" stage on the asset folder's own VAE (`out/pipeline/vae`); returns what it measured before and after:
    reconstruction error (0-255 MAE) on world and open-colour images, and how far world latents moved (RMS, scaled)."""
    from diffusers import AutoencoderKL

    vae_dir = out / "pipeline" / "vae"
    if not (vae_dir / "config.json").exists():
        raise FileNotFoundError(
            f"the open_colours stage fine-tunes {vae_dir}, which does not exist: build the pipeline first "
            "(stages vae and unet) or point --out at an existing asset folder"
        )
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    world, open_ = draw_open_colour_batch(
        np.random.default_rng(cfg.seed + 10), 128, cfg.open_colour_pattern_share
    )  # held-out
    with torch.no_grad():
        world_latents = vae.encode(world).latent_dist.mean * vae.config.scaling_factor
    measured = {
        "world_mae_before": reconstruction_error(vae, world),
        "open_mae_before": reconstruction_error(vae, open_),
    }
    vae = train_open_colours(cfg, vae, work)
    with torch.no_grad():
        drift = (vae.encode(world).latent_dist.mean * vae.config.scaling_factor - world_latents).pow(2).mean().sqrt()
    measured |= {
        "world_mae_after": reconstruction_error(vae, world),
        "open_mae_after": reconstruction_error(vae, open_),
        "world_latent_rms_drift": float(drift),
    }
    tmp = vae_dir.with_name("vae.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(vae_dir)
    tmp.rename(vae_dir)
    return measured
