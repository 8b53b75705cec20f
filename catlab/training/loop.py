"""The training loop: `train(cfg)` builds a `TrainingRun` and calls `step(run, i)` until done. accelerate handles
devices, mixed precision, several processes (`accelerate launch`) and experiment trackers; `training.checkpoints`
gives exact resume.

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

import numpy as np
import torch
from tqdm.auto import tqdm

from catlab.config import TrainConfig, save_config, share_row_count
from catlab.files import write_text_atomic
from catlab.models import (
    adapters_disabled,
    add_lora,
    configured_resolution,
    load_base,
    lora_parameters,
    native_resolution,
    save_lora,
)
from catlab.models.trigger_embedding import initial_trigger_vectors, trigger_embedding_of, wrap_token_embedding
from catlab.training import class_images
from catlab.training.batches import SlotBatch, UpdateDraw, draw_update, dropout_seed
from catlab.training.callbacks import TrainCallback, TrainResult
from catlab.training.checkpoints import (
    Trained,
    latest_checkpoint,
    load_checkpoint,
    prepare_output_dir,
    save_checkpoint,
)
from catlab.training.losses import (
    CatTerm,
    LossTerms,
    cat_loss,
    denoising_target,
    min_snr_weights,
    prior_preservation_loss,
)
from catlab.training.state import TextStates, TrainingRun

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's attention projections, as diffusers


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


def micro_step(run: TrainingRun, draw: UpdateDraw, i: int, slot: int) -> dict[str, float]:
    """Forward and backward of one micro-batch, slot `slot` of update i; returns its loss terms."""
    with torch.random.fork_rng(devices=_rng_devices()):  # LoRA dropout draws from torch's global RNG: not the caller's
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


def _rng_devices() -> list[int]:
    """The CUDA devices whose RNG torch.manual_seed reseeds (none on a CPU): what fork_rng saves and restores."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def start_run(cfg: TrainConfig, resume: bool = False) -> tuple[TrainingRun, int]:
    """Check the data, load the base model, draw the class images, add the adapters, restore a checkpoint: (the run,
    the first step to do)."""
    from diffusers import DDPMScheduler

    dataset = _checked_data(cfg)  # every concept-data problem now, not after loading the base model (GBs for SD 1.5)
    acc = _make_accelerator(cfg, Path(cfg.output_dir))
    out, ckpt = prepare_output_dir(cfg.output_dir, cfg.resume_from_checkpoint or ("latest" if resume else None))
    acc.wait_for_everyone()  # every process has checked the folder before the main one writes into it
    pipe, weight_dtype = _frozen_pipeline(cfg, acc)
    resolution = cfg.resolution or native_resolution(pipe)
    dataset = _dataset_at(cfg, dataset, resolution, pipe.tokenizer)
    # in the training precision (diffusers' --prior_generation_precision), before the adapters exist
    images, prompts, class_s = class_images.prepare(pipe, cfg, out, resolution, acc)
    unet, te, opt, lr_sched, params = _adapters_and_optimiser(cfg, acc, pipe, weight_dtype)
    text = TextStates(pipe.tokenizer, pipe.text_encoder, acc.device, frozen=not cfg.text_encoder_trains, trained=te)
    run = TrainingRun(
        cfg=cfg,
        out=out,
        acc=acc,
        pipe=pipe,
        unet=unet,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        dataset=dataset,
        text=text,
        optimizer=opt,
        lr_scheduler=lr_sched,
        params=params,
        weight_dtype=weight_dtype,
        class_images=images,
        class_prompts=prompts,
        class_images_s=class_s,
    )
    start = _maybe_resume(run, ckpt)
    _open_logs(run, start, new_run=ckpt is None)
    run.last_checkpoint = latest_checkpoint(out)
    return run, start


def _checked_data(cfg: TrainConfig):
    """The training data, built before any model loads so that every concept-data problem surfaces now; at the
    model's resolution when its config files tell it (`_dataset_at` finishes the checks once the model is there)."""
    if not cfg.concepts:
        raise ValueError("TrainConfig.concepts is empty: add at least one ConceptConfig(folder, trigger, class_word)")
    _check_tracker(cfg.report_to)
    return _dataset(cfg, cfg.resolution or configured_resolution(cfg.base_model) or 1)


def _dataset(cfg: TrainConfig, resolution: int):
    from catlab.data.dataset import ConceptDataset

    return ConceptDataset(
        cfg.concepts,
        resolution=resolution,
        center_crop=cfg.center_crop,
        random_flip=cfg.random_flip,
        trigger_free=cfg.trigger_free,
        seed=cfg.seed,
    )


def _dataset_at(cfg: TrainConfig, dataset, resolution: int, tokenizer):
    """The dataset at the model's resolution, its captions checked against the model's tokenizer: the one built
    before the model loaded, unless only the weights knew the resolution."""
    if dataset.resolution != resolution:
        dataset = _dataset(cfg, resolution)
    dataset.check_tokenizer(tokenizer)
    return dataset


def _frozen_pipeline(cfg: TrainConfig, acc) -> tuple:
    """(the base pipeline on this process's device, every weight frozen and in the training precision, that dtype):
    fp16/bf16 under mixed precision; the LoRA weights added later train in fp32."""
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    with torch.random.fork_rng(devices=_rng_devices()):  # loading draws from torch's global RNG: not the caller's
        pipe = load_base(cfg.base_model, device=acc.device, **cfg.loading_options())
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    return pipe, weight_dtype


def _adapters_and_optimiser(cfg: TrainConfig, acc, pipe, weight_dtype: torch.dtype) -> tuple:
    """Fresh LoRA adapters (the UNet's, and the text encoder's with train_text_encoder), the trigger's embedding with
    trigger_embedding_lr, their AdamW and LR schedule, prepared by accelerate: (UNet, text encoder or None,
    optimiser, LR scheduler, the trainable parameters)."""
    from diffusers.training_utils import cast_training_params

    trained = [pipe.unet] + ([pipe.text_encoder] if cfg.text_encoder_trains else [])
    with torch.random.fork_rng(devices=_rng_devices()):  # the caller's RNG stays as it was
        torch.manual_seed(cfg.seed)  # the LoRA's random A matrices depend on it
        add_lora(pipe.unet, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
        if cfg.train_text_encoder:
            add_lora(pipe.text_encoder, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, TEXT_ENCODER_TARGETS)
    if weight_dtype != torch.float32:
        cast_training_params(trained, dtype=torch.float32)  # LoRA weights train in fp32, frozen ones stay as they are
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    params = [p for m in trained for p in lora_parameters(m)]
    groups = [{"params": params}]
    if cfg.trigger_embedding_lr > 0:  # pivotal tuning: a rate of its own and no weight decay, as textual inversion
        emb = wrap_token_embedding(pipe.text_encoder)
        ids, start = initial_trigger_vectors(pipe.tokenizer, emb.weight, cfg.concepts, cfg.trigger_embedding_init)
        vectors = emb.add("default", ids, start)  # (T, D)
        groups.append({"params": [vectors], "lr": cfg.trigger_embedding_lr, "weight_decay": 0.0})
        params = params + [vectors]
    # on a CPU torch's default AdamW updates the LoRA tensors one at a time in Python (its multi-tensor path is for
    # accelerators); the fused kernel does them in one call, a few % of a toy-world step (benchmarks/step_cost.py)
    fused = True if acc.device.type == "cpu" else None
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay, fused=fused)
    # both models, so that DDP averages the text encoder's gradients too (diffusers prepares both)
    unet, *te, opt, lr_sched = acc.prepare(*trained, opt, lr_schedule(cfg, opt, acc.num_processes))
    if cfg.compile_unet:  # the UNet only: the VAE and a frozen text encoder run once per step, without gradients
        unet = torch.compile(unet)
    return unet, (te[0] if te else None), opt, lr_sched, params


def lr_schedule(cfg: TrainConfig, optimizer, num_processes: int = 1):
    """The LR schedule for `steps` updates on any number of processes. accelerate steps a prepared scheduler once
    per process at each update (AcceleratedScheduler.step), so warm-up and length count updates x processes, as
    diffusers' train_dreambooth_lora.py does; the LR at update i is then the same on 1 or N processes."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * num_processes,
        num_training_steps=cfg.steps * num_processes,
    )


def _maybe_resume(run: TrainingRun, ckpt: Path | None) -> int:
    """Restore checkpoint `ckpt` (None: a new run) into the adapters, optimiser and LR schedule; the first update to
    do. Resume on as many processes as before: the LR schedule's position counts updates x processes."""
    if ckpt is None:
        return 0
    start, run.history = load_checkpoint(ckpt, _trained(run))
    return start


def _open_logs(run: TrainingRun, start: int, new_run: bool) -> None:
    """config.yaml of a new run; on resume, metrics.jsonl cut back to the checkpoint's step so that every step is
    logged once (tensorboard hides its own later events: purge_step); the trackers."""
    cfg, out = run.cfg, run.out
    if run.acc.is_main_process:
        if new_run or not (out / "config.yaml").exists():
            save_config(cfg, out / "config.yaml")
        _truncate_metrics(out / "metrics.jsonl", start)
    if cfg.report_to != "none":
        kwargs = {
            "wandb": {"name": out.name, "dir": str(out)},
            "tensorboard": {"purge_step": start + 1} if start else {},
        }
        run.acc.init_trackers("catlab", config=_tracker_config(cfg), init_kwargs=kwargs)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep metrics.jsonl's lines up to `step`, the checkpoint resumed from: the steps after it are trained again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut short by the interruption
            continue
    write_text_atomic(path, "".join(kept))


def checkpoint(run: TrainingRun, done: int) -> Path:
    """Write checkpoints/step-{done}: the adapter, optimiser, LR schedule and history (pickle-free)."""
    unet, cfg = run.unwrapped_unet, run.cfg

    def write_adapter(folder: Path) -> None:
        run.pipe.unet = unet
        save_lora(run.pipe, folder, metadata=run_metadata(cfg, done), overwrite=True)

    return save_checkpoint(
        run.out, done, _trained(run), run.history, write_adapter=write_adapter, keep=cfg.checkpoints_total_limit
    )


def _trained(run: TrainingRun) -> Trained:
    """What a checkpoint of this run holds: the adapters (the text encoder's LoRA and the trigger's embedding when
    they train), the optimiser, the LR schedule and the gradient scaler."""
    emb = trigger_embedding_of(run.text_encoder)
    return Trained(
        unet=run.unwrapped_unet,
        te=run.text_encoder if run.cfg.train_text_encoder else None,
        opt=run.optimizer,
        lr_sched=run.lr_scheduler,
        scaler=run.acc.scaler,
        trigger_vectors=emb.vectors if emb is not None and run.cfg.trigger_embedding_lr > 0 else None,
    )


def _make_accelerator(cfg: TrainConfig, out: Path):
    """An Accelerator for this run. accelerate keeps one process-wide state, so a second run in the same notebook
    kernel with another `mixed_precision` would raise; outside `accelerate launch` that state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType
    from accelerate.utils import ProjectConfiguration

    state = AcceleratorState._shared_state
    launched = state.get("distributed_type") != DistributedType.NO  # under `accelerate launch`: keep what it set up
    if state and state.get("_mixed_precision") != cfg.mixed_precision and not launched:
        AcceleratorState._reset_state(reset_partial_state=True)
    # no gradient_accumulation_steps: `step` runs the micro-batches of an update itself
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _check_tracker(report_to: str) -> None:
    """accelerate only warns and logs nowhere when a tracker's package is missing; stop before anything runs instead."""
    import importlib.util

    pkg = TRACKER_PACKAGES.get(report_to)
    if pkg and importlib.util.find_spec(pkg) is None:
        raise ValueError(
            f"report_to={report_to!r} needs the {pkg} package, which is not installed: pip install {pkg} "
            "(or report_to: none)"
        )


def _tracker_config(cfg: TrainConfig) -> dict:
    """The config as trackers take it: numbers, strings, booleans and None (lists and concepts as JSON)."""
    plain = (bool, int, float, str)
    return {k: v if v is None or isinstance(v, plain) else json.dumps(v) for k, v in cfg.to_dict().items()}


def run_metadata(cfg: TrainConfig, step: int | None = None) -> dict:
    """What the adapter files record about the run (catlab_adapter.json and both safetensors headers)."""
    return {
        "trigger": ",".join(c.trigger for c in cfg.concepts),
        "class_word": ",".join(c.class_word for c in cfg.concepts),
        "base_model": cfg.base_model,
        "regime": cfg.regime,
        "cat_lambda": cfg.cat_lambda,
        "steps": cfg.steps if step is None else step,
        **({"trigger_embedding_lr": cfg.trigger_embedding_lr} if cfg.trigger_embedding_lr > 0 else {}),
        **({"trigger_embedding_init": cfg.trigger_embedding_init} if cfg.trigger_embedding_init else {}),
        # which weights exactly, only when set: the hub revision, the file variant, a replaced VAE
        **{
            k: v
            for k, v in (("base_revision", cfg.revision), ("base_variant", cfg.variant), ("vae", cfg.vae))
            if v is not None
        },
    }


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
