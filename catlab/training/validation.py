"""Validation during training: the validation prompts sampled with the adapter as it is (and, with
`validation_base_row`, with it off), written as a grid, logged to the trackers and handed to the callbacks."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from catlab.models import adapters_disabled
from catlab.training.state import TrainingRun


@torch.no_grad()
def validate(run: TrainingRun, step: int, callbacks=()) -> None:
    """Sample the validation prompts with the adapter as it is now (and, with `validation_base_row`, with it off);
    write a grid, log it, tell the callbacks."""
    from catlab.config import expand_validation_prompts
    from catlab.files import save_image_atomic
    from catlab.sampling.grids import image_grid

    cfg, unet = run.cfg, run.unwrapped_unet
    was_training = unet.training
    unet.eval()
    run.pipe.unet = unet
    prompts = expand_validation_prompts(cfg.validation_prompts, cfg.concepts)
    images = _draw_validation(run, prompts)
    labels, rows = list(prompts), list(images)
    if cfg.validation_base_row:  # each prompt's base-model row above its adapter row: what training changed
        te = run.text_encoder if cfg.text_encoder_trains else None
        with adapters_disabled(unet), adapters_disabled(te) if te is not None else contextlib.nullcontext():
            base = _draw_validation(run, prompts)
        labels = [label for p in prompts for label in (f"base: {p}", p)]
        rows = [row for pair in zip(base, images) for row in pair]
    seeds = cfg.validation_seeds
    save_image_atomic(
        image_grid(rows, labels, [f"seed {s}" for s in seeds], title=f"step {step}"),
        run.out / "validation" / f"step-{step:06d}.png",
    )
    unet.train(was_training)
    _log_images(run.acc, [label.replace("base: ", "base/") for label in labels], rows, seeds, step)
    for cb in callbacks:
        cb.on_validation(step, dict(zip(prompts, images)))


def _draw_validation(run: TrainingRun, prompts: list[str]) -> list:
    """The validation prompts on the validation seeds, with the configured steps, guidance and negative prompt."""
    from catlab.sampling.sampler import generate

    cfg = run.cfg
    # accelerate's mixed-precision wrapper returns fp32 from the UNet; the VAE and text encoder are in fp16/bf16,
    # so the pipeline runs under the same autocast as training (diffusers' scripts do the same)
    with run.acc.autocast():
        return generate(
            run.pipe,
            prompts,
            cfg.validation_seeds,
            num_inference_steps=cfg.validation_steps,
            guidance_scale=cfg.validation_guidance,
            negative_prompt=cfg.validation_negative_prompt,
            progress=False,
        )


def _log_images(acc, prompts, images, seeds, step) -> None:
    """Validation samples to the trackers: one image row per prompt, one image per seed."""
    for tracker in acc.trackers:
        for prompt, row in zip(prompts, images):
            if tracker.name == "tensorboard":
                tracker.writer.add_images(
                    f"validation/{prompt}",
                    np.stack([np.asarray(im.convert("RGB")) for im in row]),
                    step,
                    dataformats="NHWC",
                )
            elif tracker.name == "wandb":
                import wandb

                tracker.log(
                    {f"validation/{prompt}": [wandb.Image(im, caption=f"seed {s}") for im, s in zip(row, seeds)]},
                    step=step,
                )
