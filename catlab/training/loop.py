"""The training loop: `train(cfg)` builds a `TrainingRun` and calls `step(run, i)` until done. accelerate handles
devices, mixed precision, multi-GPU (`accelerate launch`), gradient accumulation and experiment trackers;
`training.checkpoints` gives exact resume.

Every random choice of step i (which images, crops, flips, noise, timesteps, dropout) is drawn from generators
seeded by (seed, i). A resumed run therefore replays exactly what an uninterrupted run would have done, and only
the adapter, optimizer and LR-scheduler states need to be checkpointed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from catlab.config import TrainConfig, save_config, share_row_count
from catlab.models import add_lora, configured_resolution, load_base, lora_parameters, native_resolution, save_lora
from catlab.training.callbacks import TrainCallback, TrainResult
from catlab.training.checkpoints import latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint
from catlab.training.class_images import generate_class_images, load_class_images
from catlab.training.losses import LossTerms, cat_loss, denoising_target, min_snr_weights, prior_preservation_loss
from catlab.training.state import TextStates, TrainingRun


def train(cfg: TrainConfig, resume: bool = False, callbacks: list[TrainCallback] | tuple = (), progress: bool = True) -> TrainResult:
    """Train one adapter as configured; returns where it was saved and the loss history. `progress=False` hides the
    step bar (the demo shows one bar over all its runs instead)."""
    t_start = time.time()
    run, start = start_run(cfg, resume)
    bar = tqdm(range(start, cfg.steps), desc=f"train [{cfg.regime}]", initial=start, total=cfg.steps,
               disable=not progress or not run.acc.is_local_main_process)
    log_path = run.out / "metrics.jsonl"
    run.unet.train()
    try:
        for i in bar:
            logs = step(run, i)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            done = i + 1
            if run.acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
                with log_path.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
                run.acc.log({k: v for k, v in logs.items() if k != "step"}, step=done)
            for cb in callbacks:
                cb.on_step(done, logs)
            if cfg.validate_every and done % cfg.validate_every == 0 and run.acc.is_main_process:
                validate(run, done, callbacks)
            if run.acc.is_main_process and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                run.last_checkpoint = checkpoint(run, done)
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


def step(run: TrainingRun, i: int) -> dict:
    """Optimisation step i: forward -> backward -> clip -> step, inside accelerate's accumulation context (which skips
    the gradient sync between micro-steps and the optimiser step until the last one). Returns the step's logs."""
    t0 = time.time()
    with run.acc.accumulate(run.unet):
        terms = compute_losses(run, i)
        if not torch.isfinite(terms.loss.detach()):
            raise FloatingPointError(f"loss became {terms.loss.item()} at step {i}; training stopped. Last good checkpoint: "
                                     f"{run.last_checkpoint or 'none'}. Lower learning_rate or use mixed_precision='no', then resume.")
        run.acc.backward(terms.loss)
        if run.acc.sync_gradients and run.cfg.max_grad_norm > 0:
            run.acc.clip_grad_norm_(run.params, run.cfg.max_grad_norm)  # the trainable (LoRA) parameters, not the frozen base
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    logs = {"step": i + 1, **terms.as_floats(), "lr": run.lr_scheduler.get_last_lr()[0], "step_s": time.time() - t0}
    run.history.append(logs)
    return logs


def compute_losses(run: TrainingRun, i: int) -> LossTerms:
    """The forward half of step i: draw the batch, noise it, and apply the regime's objective."""
    cfg, acc, dtype = run.cfg, run.acc, run.weight_dtype
    rng = np.random.default_rng(_step_seed(cfg.seed, i, acc.process_index))
    torch.manual_seed(_step_seed(cfg.seed, i, 1 + acc.process_index))  # LoRA dropout
    run.dataset.set_epoch(i)
    replace = cfg.batch_size > len(run.dataset)  # without replacement when possible: repeats would share one augmentation
    items = [run.dataset[int(k)] for k in rng.choice(len(run.dataset), size=cfg.batch_size, replace=replace)]
    pixels = torch.stack([it["pixel_values"] for it in items])  # (B, 3, R, R)
    captions = [it["caption"] for it in items]
    trigger_free = [it["trigger_free_caption"] for it in items]
    n_concept = len(items)
    n_cat = share_row_count(cfg.batch_size, cfg.cat_share)  # rows that carry the CAT term (cat_share < 1: cheaper steps)
    if run.anchored:  # the CAT rows look at the base model's own class images, captioned with their class prompt
        ai = rng.integers(len(run.class_images), size=n_cat)
        pixels = torch.cat([pixels, run.class_images[ai]])  # (B + n_cat, 3, R, R): concept images, then anchors
        trigger_free = [run.class_prompts[k] for k in ai]
    elif cfg.regime == "cat":
        trigger_free = trigger_free[:n_cat]  # the paper's rows: the first n_cat concept images, trigger dropped
    if cfg.regime == "cat" and cfg.cat_null_share > 0:
        # classifier-free guidance samples with eps(c) and eps(""): an adapter that shifts eps("") while CAT holds
        # eps(c_free) moves guided class samples *away* from the concept; holding eps("") too prevents that
        n_null = round(len(trigger_free) * cfg.cat_null_share)
        trigger_free = [""] * n_null + trigger_free[n_null:]
    if run.class_images is not None and not run.anchored:  # DreamBooth: instance then class images, one forward
        ci = rng.integers(len(run.class_images), size=share_row_count(cfg.batch_size, cfg.prior_share))
        pixels = torch.cat([pixels, run.class_images[ci]])  # (B + n_prior, 3, R, R)
        captions = captions + [run.class_prompts[k] for k in ci]
    g = torch.Generator().manual_seed(_step_seed(cfg.seed, i, 2 + acc.process_index))
    with torch.no_grad():
        posterior = run.vae.encode(pixels.to(acc.device, dtype)).latent_dist
        eps_latent = torch.randn(posterior.mean.shape, generator=g).to(acc.device, dtype)
        latents = (posterior.mean + posterior.std * eps_latent) * run.vae.config.scaling_factor  # (B, 4, h, w)
    noise = torch.randn(latents.shape, generator=g).to(acc.device, latents.dtype)
    t = torch.randint(0, run.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g).to(acc.device)
    noisy = run.noise_scheduler.add_noise(latents, noise, t)  # (B, 4, h, w)
    target = denoising_target(run.noise_scheduler, latents, noise, t)
    cond, cond_free = (h.to(dtype) for h in run.text(captions, trigger_free))  # (B, L, D) each
    cond_null = run.text([""])[0].to(dtype) if cfg.cat_guidance else None  # (1, L, D): the guided CAT term's empty caption
    weights = min_snr_weights(run.noise_scheduler, t, cfg.snr_gamma) if cfg.snr_gamma else None
    with acc.autocast():
        if cfg.regime == "dreambooth":
            pred = run.unet(noisy, t, encoder_hidden_states=cond).sample
            return prior_preservation_loss(pred, target, n_concept, cfg.prior_loss_weight, weights)
        lam = cfg.cat_lambda if cfg.regime == "cat" else 0.0
        if lam and cfg.cat_every > 1:  # amortised CAT: every k-th step, weighted by k so the expected penalty is unchanged
            lam = lam * cfg.cat_every if i % cfg.cat_every == 0 else 0.0
        if run.anchored:  # concept rows train the trigger, anchor rows carry the CAT term
            return cat_loss(run.unet, noisy[:n_concept], t[:n_concept], cond, cond_free, target[:n_concept], lam=lam,
                            weights=None if weights is None else weights[:n_concept], anchors=(noisy[n_concept:], t[n_concept:]),
                            cat_share=cfg.cat_share, guidance=cfg.cat_guidance, cond_null=cond_null)
        return cat_loss(run.unet, noisy, t, cond, cond_free, target, lam=lam, cat_share=cfg.cat_share, weights=weights,
                        guidance=cfg.cat_guidance, cond_null=cond_null)


def start_run(cfg: TrainConfig, resume: bool = False) -> tuple[TrainingRun, int]:
    """Check the data, load the base model, add the adapter, restore a checkpoint: (the run, the first step to do)."""
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    from catlab.data.dataset import ConceptDataset

    if not cfg.concepts:
        raise ValueError("TrainConfig.concepts is empty: add at least one ConceptConfig(folder, trigger, class_word)")
    _check_tracker(cfg.report_to)
    # every concept-data problem surfaces now, not after loading the base model (gigabytes for SD 1.5); the trigger
    # against the model's tokenizer (and the image size, when only the weights know the resolution) is checked below
    early = cfg.resolution or configured_resolution(cfg.base_model) or 1
    ConceptDataset([c.__dict__ for c in cfg.concepts], resolution=early, trigger_free=cfg.trigger_free, seed=cfg.seed)
    out, ckpt = prepare_output_dir(cfg.output_dir, cfg.resume_from_checkpoint or ("latest" if resume else None))
    acc = _make_accelerator(cfg, out)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    pipe = load_base(cfg.base_model, device=acc.device)
    resolution = cfg.resolution or native_resolution(pipe)
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    for m in (unet, vae, te):
        m.requires_grad_(False)
    dataset = ConceptDataset([c.__dict__ for c in cfg.concepts], resolution=resolution, center_crop=cfg.center_crop,
                             random_flip=cfg.random_flip, trigger_free=cfg.trigger_free, seed=cfg.seed, tokenizer=pipe.tokenizer)
    class_images, class_prompts, class_s = None, [], 0.0
    if cfg.regime == "dreambooth" or (cfg.regime == "cat" and cfg.cat_anchor == "class"):  # before the adapter exists
        t0 = time.time()
        prompts = sorted({cfg.class_prompt or f"a {c.class_word}" for c in cfg.concepts})
        folder = Path(cfg.class_images_dir) if cfg.class_images_dir else out / "class_images"
        paths = []
        for prompt in prompts:
            sub = folder if len(prompts) == 1 else folder / prompt.replace(" ", "_")
            got = generate_class_images(pipe, prompt, cfg.num_class_images, sub, resolution)
            paths += got
            class_prompts += [prompt] * len(got)
        class_images = load_class_images(paths, resolution)
        class_s = time.time() - t0

    if weight_dtype != torch.float32:  # frozen weights in half precision; the LoRA is cast back to fp32 below
        for m in (vae, te, unet):
            m.to(dtype=weight_dtype)
    set_seed(cfg.seed)  # the LoRA's random A matrices depend on it
    add_lora(unet, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    if cfg.train_text_encoder:
        add_lora(te, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, ["q_proj", "k_proj", "v_proj", "out_proj"])
    if weight_dtype != torch.float32:
        cast_training_params([unet, te], dtype=torch.float32)  # LoRA weights train in fp32, frozen weights stay low precision
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = lora_parameters(unet) + (lora_parameters(te) if cfg.train_text_encoder else [])
    # on a CPU torch's default AdamW updates the LoRA tensors one at a time in Python (its multi-tensor path is for
    # accelerators); the fused kernel does them in one call, a few % of a toy-world step (benchmarks/step_cost.py)
    fused = True if acc.device.type == "cpu" else None
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay, fused=fused)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer=opt, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
    unet, opt, lr_sched = acc.prepare(unet, opt, lr_sched)

    run = TrainingRun(cfg=cfg, out=out, acc=acc, pipe=pipe, unet=unet, noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
                      dataset=dataset, text=TextStates(pipe.tokenizer, te, acc.device, frozen=not cfg.train_text_encoder),
                      optimizer=opt, lr_scheduler=lr_sched, params=params, weight_dtype=weight_dtype,
                      class_images=class_images, class_prompts=class_prompts, class_images_s=class_s)
    start = 0
    if ckpt is not None:
        start, run.history = load_checkpoint(ckpt, unet=run.unwrapped_unet, te=te if cfg.train_text_encoder else None, opt=opt,
                                             lr_sched=lr_sched, scaler=acc.scaler)
    if ckpt is None or not (out / "config.yaml").exists():
        save_config(cfg, out / "config.yaml")
    if cfg.report_to != "none":
        acc.init_trackers("catlab", config=_tracker_config(cfg), init_kwargs={"wandb": {"name": out.name, "dir": str(out)}})
    run.last_checkpoint = latest_checkpoint(out)
    return run, start


def checkpoint(run: TrainingRun, done: int) -> Path:
    """Write checkpoints/step-{done}: the adapter, optimiser, LR schedule and history (pickle-free)."""
    unet, cfg = run.unwrapped_unet, run.cfg

    def write_adapter(folder: Path) -> None:
        run.pipe.unet = unet
        save_lora(run.pipe, folder, metadata=run_metadata(cfg, done), overwrite=True)

    return save_checkpoint(run.out, done, unet=unet, te=run.text_encoder if cfg.train_text_encoder else None, opt=run.optimizer,
                           lr_sched=run.lr_scheduler, history=run.history, scaler=run.acc.scaler, write_adapter=write_adapter,
                           keep=cfg.checkpoints_total_limit)


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1)


def _make_accelerator(cfg: TrainConfig, out: Path):
    """An Accelerator for this run. accelerate keeps one process-wide state, so a second run in the same notebook
    kernel with another `mixed_precision` would raise; outside `accelerate launch` that state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType
    from accelerate.utils import ProjectConfiguration

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != cfg.mixed_precision and state.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation,
                       log_with=None if cfg.report_to == "none" else cfg.report_to,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _check_tracker(report_to: str) -> None:
    """accelerate only warns and logs nowhere when a tracker's package is missing; stop before anything runs instead."""
    import importlib.util

    pkg = TRACKER_PACKAGES.get(report_to)
    if pkg and importlib.util.find_spec(pkg) is None:
        raise ValueError(f"report_to={report_to!r} needs the {pkg} package, which is not installed: pip install {pkg} "
                         "(or report_to: none)")


def _tracker_config(cfg: TrainConfig) -> dict:
    """The config as trackers take it: numbers, strings, booleans and None (lists and concepts as JSON)."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in cfg.to_dict().items()}


def run_metadata(cfg: TrainConfig, step: int | None = None) -> dict:
    """What the adapter files record about the run (catlab_adapter.json and both safetensors headers)."""
    return {"trigger": ",".join(c.trigger for c in cfg.concepts), "class_word": ",".join(c.class_word for c in cfg.concepts),
            "base_model": cfg.base_model, "regime": cfg.regime, "cat_lambda": cfg.cat_lambda, "steps": cfg.steps if step is None else step}


def validation_prompts(cfg: TrainConfig) -> list[str]:
    prompts = []
    for c in cfg.concepts:
        prompts += [f"a {c.trigger} {c.class_word}", f"a {c.class_word}"]
    return prompts


@torch.no_grad()
def validate(run: TrainingRun, step: int, callbacks=()) -> None:
    """Sample the validation prompts with the adapter as it is now; write a grid, log it, tell the callbacks."""
    from catlab.files import save_image_atomic
    from catlab.sampling.grids import image_grid
    from catlab.sampling.sampler import generate

    cfg, unet = run.cfg, run.unwrapped_unet
    was_training = unet.training
    unet.eval()
    run.pipe.unet = unet
    prompts = validation_prompts(cfg)
    # accelerate's mixed-precision wrapper returns fp32 from the UNet; the VAE and text encoder are in fp16/bf16,
    # so the pipeline runs under the same autocast as training (diffusers' scripts do the same)
    with run.acc.autocast():
        images = generate(run.pipe, prompts, cfg.validation_seeds, progress=False)
    save_image_atomic(image_grid(images, prompts, [f"seed {s}" for s in cfg.validation_seeds], title=f"step {step}"),
                      run.out / "validation" / f"step-{step:06d}.png")
    unet.train(was_training)
    _log_images(run.acc, prompts, images, cfg.validation_seeds, step)
    for cb in callbacks:
        cb.on_validation(step, dict(zip(prompts, images)))


def _log_images(acc, prompts, images, seeds, step) -> None:
    """Validation samples to the trackers: one image row per prompt, one image per seed."""
    for tracker in acc.trackers:
        for prompt, row in zip(prompts, images):
            if tracker.name == "tensorboard":
                tracker.writer.add_images(f"validation/{prompt}", np.stack([np.asarray(im.convert("RGB")) for im in row]), step,
                                          dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{prompt}": [wandb.Image(im, caption=f"seed {s}") for im, s in zip(row, seeds)]}, step=step)


def steps_per_second(history: list[dict]) -> float:
    times = [h["step_s"] for h in history[1:]] or [math.nan]
    return 1.0 / float(np.median(times))
