"""The training loop: `train(cfg)` builds a `TrainingRun` and calls `step(run, i)` until done. accelerate handles
devices, mixed precision, several processes (`accelerate launch`) and experiment trackers; `training.checkpoints`
gives exact resume; `training.start` builds the run, `training.validation` draws its sample grids.

Step i is one optimiser update: `gradient_accumulation` micro-batches per process, each forward -> backward, then
one optimiser step (nanoGPT's micro-step loop; diffusers' max_train_steps). `steps`, `cat_every` and every interval
count updates, so checkpoints fall between them. Every random choice of update i (which images, crops, flips,
dropped captions, noise, timesteps, dropout) is drawn from generators seeded by (seed, i) for the whole global batch,
and each micro-batch of each process takes its own rows of it (`training.batches`). A resumed run therefore replays
exactly what an uninterrupted run would have done, only the adapter, optimizer and LR-scheduler states need to be
checkpointed, and several processes train what one process does on the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from catlab.config import TrainConfig, share_row_count
from catlab.models import save_lora
from catlab.training.batches import SlotBatch, UpdateDraw, draw_update, dropout_seed
from catlab.training.callbacks import TrainCallback, TrainResult
from catlab.training.checkpoints import save_checkpoint
from catlab.training.losses import (
    CatTerm,
    LossTerms,
    cat_loss,
    denoising_target,
    min_snr_weights,
    prior_preservation_loss,
)
from catlab.training.start import rng_devices, run_metadata, start_run, trained_parts
from catlab.training.state import TrainingRun
from catlab.training.validation import validate


def train(
    cfg: TrainConfig, resume: bool = False, callbacks: list[TrainCallback] | tuple = (), progress: bool = True
) -> TrainResult:
    """Train one adapter as configured; returns where it was saved and the loss history. `progress=False` hides the
    step bar (the demo shows one bar over all its runs instead)."""
    t_start = time.time()
    run, start = start_run(cfg, resume)
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"train [{cfg.regime}]",
        initial=start,
        total=cfg.steps,
        disable=not progress or not run.acc.is_local_main_process,
    )
    run.unet.train()
    try:
        for i in bar:
            logs = step(run, i)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            after_step(run, i + 1, logs, callbacks)
    finally:
        for tracker in run.acc.trackers:  # flush and close the event files even when a run stops early
            tracker.finish()
    run.acc.wait_for_everyone()
    adapter_dir = run.out / "adapter"
    if run.acc.is_main_process:
        run.pipe.unet = run.unwrapped_unet
        save_lora(run.pipe, adapter_dir, metadata=run_metadata(cfg), overwrite=True)
    result = TrainResult(run.out, adapter_dir, run.history, time.time() - t_start, run.class_images_s)
    for cb in callbacks:
        cb.on_end(result)
    return result


def after_step(run: TrainingRun, done: int, logs: dict, callbacks=()) -> None:
    """What follows update `done` (1-based): its log line, the callbacks, validation and a checkpoint, each at its
    interval. Files are written by the main process only."""
    cfg, main = run.cfg, run.acc.is_main_process
    if main and (done % cfg.log_every == 0 or done == cfg.steps):
        with (run.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(logs) + "\n")
        run.acc.log({k: v for k, v in logs.items() if k != "step"}, step=done)
    for cb in callbacks:
        cb.on_step(done, logs)
    if cfg.validate_every and done % cfg.validate_every == 0 and main:
        validate(run, done, callbacks)
    if main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
        run.last_checkpoint = checkpoint(run, done)


def step(run: TrainingRun, i: int) -> dict:
    """Optimisation step i, one update: each of this process's micro-batches forward -> backward (gradients are
    averaged across processes after the last one only), then clip -> optimiser step -> LR step. Returns its logs."""
    t0 = time.time()
    k = run.cfg.gradient_accumulation
    draw = draw_update(
        run.cfg,
        i,
        run.acc.num_processes * k,
        len(run.dataset),
        len(run.class_prompts),
        run.latent_shape,
        run.noise_scheduler.config.num_train_timesteps,
    )
    terms = []
    for micro in range(k):
        with _no_sync(run) if micro < k - 1 else contextlib.nullcontext():
            terms.append(micro_step(run, draw, i, slot=run.acc.process_index * k + micro))
    if in_embedding_phase(run.cfg, i):
        drop_lora_gradients(run.optimizer)
    if run.cfg.max_grad_norm > 0:
        run.acc.clip_grad_norm_(run.params, run.cfg.max_grad_norm)  # the trainable (LoRA) parameters only
    run.optimizer.step()
    run.lr_scheduler.step()  # accelerate steps it once per process: `lr_schedule` counts that
    run.optimizer.zero_grad(set_to_none=True)
    logs = {
        "step": i + 1,
        **_mean_terms(run.acc, terms),
        "lr": run.lr_scheduler.get_last_lr()[0],
        "step_s": time.time() - t0,
    }
    run.history.append(logs)
    return logs


def in_embedding_phase(cfg, i: int) -> bool:
    """Whether update i (0-based) belongs to pivotal tuning's first phase (`trigger_embedding_first`), in which the
    trigger's embedding trains alone."""
    return i < round(cfg.trigger_embedding_first * cfg.steps)


def drop_lora_gradients(optimizer) -> None:
    """Forget this update's gradients of the LoRA weights (the optimiser's first group, `start.py`): AdamW skips a
    parameter without a gradient, so its weights, moments and weight decay stay as they were, and clipping sees the
    embedding's gradient alone. Every process drops the same, after DDP has averaged them."""
    for p in optimizer.param_groups[0]["params"]:
        p.grad = None


def micro_step(run: TrainingRun, draw: UpdateDraw, i: int, slot: int) -> dict[str, float]:
    """Forward and backward of one micro-batch, slot `slot` of update i; returns its loss terms."""
    with torch.random.fork_rng(devices=rng_devices()):  # LoRA dropout draws from torch's global RNG: not the caller's
        torch.manual_seed(dropout_seed(run.cfg.seed, i, slot))
        terms = compute_losses(run, draw, i, slot)
    if not torch.isfinite(terms.loss.detach()):
        raise FloatingPointError(
            f"loss became {terms.loss.item()} at step {i}; training stopped. Last good "
            f"checkpoint: {run.last_checkpoint or 'none'}. Lower learning_rate or use "
            "mixed_precision='no', then resume."
        )
    run.acc.backward(terms.loss / run.cfg.gradient_accumulation)  # the update's loss is the mean of its micro-batches'
    return terms.as_floats()


def compute_losses(run: TrainingRun, draw: UpdateDraw, i: int, slot: int) -> LossTerms:
    """The forward half of one micro-batch: slot `slot` of update i's draw, noised, through the regime's objective."""
    cfg, acc, dtype = run.cfg, run.acc, run.weight_dtype
    batch = slot_batch(run, draw, i, slot)
    rows = draw.tensor_rows(slot)  # (b + e,): this slot's rows of the update's posterior samples, noise and timesteps
    with torch.no_grad():
        posterior = run.vae.encode(batch.pixels.to(acc.device, dtype)).latent_dist
        eps_latent = draw.eps_latent[rows].to(acc.device, dtype)
        latents = (posterior.mean + posterior.std * eps_latent) * run.vae.config.scaling_factor  # (b + e, C, h, w)
    noise = draw.noise[rows].to(acc.device, latents.dtype)
    t = draw.timesteps[rows].to(acc.device)
    noisy = run.noise_scheduler.add_noise(latents, noise, t)  # (b + e, C, h, w)
    target = denoising_target(run.noise_scheduler, latents, noise, t)
    text = text_states(run, batch)
    weights = min_snr_weights(run.noise_scheduler, t, cfg.snr_gamma) if cfg.snr_gamma else None
    with acc.autocast():
        return objective(run, i, batch, text, noisy, t, target, weights)


def slot_batch(run: TrainingRun, draw: UpdateDraw, i: int, slot: int) -> SlotBatch:
    """Slot `slot`'s rows of update i: its concept images and captions, then its class images, and CAT's captions."""
    cfg = run.cfg
    run.dataset.set_epoch(i)
    items = [run.dataset[int(k)] for k in draw.items[draw.concept(slot)]]
    pixels = torch.stack([it["pixel_values"] for it in items])  # (b, 3, R, R)
    captions = ["" if drop else it["caption"] for it, drop in zip(items, draw.dropped[draw.concept(slot)])]
    trigger_free = [it["trigger_free_caption"] for it in items]
    ids = draw.class_ids[draw.class_rows(slot)]
    if len(ids):  # the base model's own class images: CAT's anchors or DreamBooth's class rows
        pixels = torch.cat([pixels, run.class_images[ids]])  # (b + e, 3, R, R)
    class_prompts = [run.class_prompts[k] for k in ids]
    if run.anchored:  # the CAT rows look at the class images, captioned with their class prompt
        both = cfg.cat_anchor == "both"  # ... after the first cat_share of the concept images, trigger dropped
        trigger_free = (trigger_free[: share_row_count(cfg.batch_size, cfg.cat_share)] if both else []) + class_prompts
    elif cfg.regime == "cat":  # the paper's rows: the first cat_share of the concept images, trigger dropped
        trigger_free = trigger_free[: share_row_count(cfg.batch_size, cfg.cat_share)]
    else:  # DreamBooth: instance then class images, one forward (plain LoRA has no class images)
        captions = captions + class_prompts
    if cfg.regime == "cat" and cfg.cat_null_share > 0:
        # classifier-free guidance samples with eps(c) and eps(""): an adapter that shifts eps("") while CAT holds
        # eps(c_free) moves guided class samples *away* from the concept; holding eps("") too prevents that
        n_null = round(len(trigger_free) * cfg.cat_null_share)
        trigger_free = [""] * n_null + trigger_free[n_null:]
    return SlotBatch(pixels, captions, trigger_free, len(items))


def text_states(run: TrainingRun, batch: SlotBatch) -> tuple:
    """(cond, cond_free, cond_null, base_text) of one micro-batch, each (B_k, L, D) in the weights' precision;
    cond_free (CAT's rows), cond_null (the guided term's empty caption) and base_text (the base text encoder's states
    of both, when the text encoder trains) are for CAT only."""
    cfg, dtype = run.cfg, run.weight_dtype
    if cfg.regime != "cat":
        (cond,) = run.text(batch.captions)
        return cond.to(dtype), None, None, None
    free = [batch.trigger_free] + ([[""]] if cfg.cat_guidance else [])  # CAT's captions, then the empty one
    cond, cond_free, *null = (h.to(dtype) for h in run.text(batch.captions, *free))
    base_text = None
    if not run.text.frozen:  # CAT's target is the base model's, its text encoder included
        free_base, *null_base = (h.to(dtype) for h in run.text.base(*free))
        base_text = (free_base, null_base[0] if null_base else None)
    return cond, cond_free, (null[0] if null else None), base_text


def objective(
    run: TrainingRun,
    i: int,
    batch: SlotBatch,
    text: tuple,
    noisy: torch.Tensor,
    t: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
) -> LossTerms:
    """The regime's loss on one noised micro-batch (concept rows first, then class-image rows)."""
    cfg, n = run.cfg, batch.n_concept
    cond, cond_free, cond_null, base_text = text
    if cfg.regime == "dreambooth":
        pred = run.unet(noisy, t, encoder_hidden_states=cond).sample
        return prior_preservation_loss(pred, target, n, cfg.prior_loss_weight, weights)
    anchors = None  # concept rows train the trigger, anchor rows carry CAT (in slot_batch's trigger_free order)
    if run.anchored:
        k = share_row_count(n, cfg.cat_share) if cfg.cat_anchor == "both" else 0
        anchors = (torch.cat([noisy[:k], noisy[n:]]), torch.cat([t[:k], t[n:]]))  # (k + e, C, h, w)
    term = CatTerm(
        share=cfg.cat_share, anchors=anchors, guidance=cfg.cat_guidance, cond_null=cond_null, base_text=base_text
    )
    return cat_loss(
        run.unet,
        noisy[:n],
        t[:n],
        cond,
        cond_free,
        target[:n],
        lam=cat_weight(cfg, i),
        weights=None if weights is None else weights[:n],
        term=term,
    )


def cat_weight(cfg: TrainConfig, i: int) -> float:
    """λ of update i: cat_lambda for CAT, 0 otherwise (plain LoRA is CAT with λ = 0). Amortised CAT (cat_every k)
    applies the term on every k-th update only, weighted by k, so the expected penalty is unchanged. With
    cat_lambda_warmup w, λ rises linearly over the first w x steps updates (update i gets (i + 1) / (w x steps))."""
    if cfg.regime != "cat":
        return 0.0
    lam = cfg.cat_lambda
    if cfg.cat_lambda_warmup > 0:
        lam *= min(1.0, (i + 1) / (cfg.cat_lambda_warmup * cfg.steps))
    if cfg.cat_every > 1:
        return lam * cfg.cat_every if i % cfg.cat_every == 0 else 0.0
    return lam


def _no_sync(run: TrainingRun) -> contextlib.ExitStack:
    """No gradient all-reduce for any trained model: a micro-batch that is not its update's last."""
    stack = contextlib.ExitStack()
    for model in run.trained_models:
        stack.enter_context(run.acc.no_sync(model))
    return stack


def _mean_terms(acc, terms: list[dict[str, float]]) -> dict[str, float]:
    """Each loss term averaged over the update's micro-batches and, for the log, over all processes."""
    mean = {k: sum(t[k] for t in terms) / len(terms) for k in terms[0]}
    if acc.num_processes > 1:
        values = acc.reduce(torch.tensor(list(mean.values()), device=acc.device), reduction="mean")
        mean = dict(zip(mean, values.tolist()))
    return mean


def checkpoint(run: TrainingRun, done: int) -> Path:
    """Write checkpoints/step-{done}: the adapter, optimiser, LR schedule and history (pickle-free)."""
    unet, cfg = run.unwrapped_unet, run.cfg

    def write_adapter(folder: Path) -> None:
        run.pipe.unet = unet
        save_lora(run.pipe, folder, metadata=run_metadata(cfg, done), overwrite=True)

    return save_checkpoint(
        run.out, done, trained_parts(run), run.history, write_adapter=write_adapter, keep=cfg.checkpoints_total_limit
    )
