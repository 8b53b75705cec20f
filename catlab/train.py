"""The training loop: accelerate for devices / mixed precision / multi-GPU / experiment trackers, exact resume
(catlab.checkpoints writes and reads the checkpoints).

Every random choice of step s (which images, crops, flips, noise, timesteps, dropout) is drawn from
generators seeded by (seed, s). A resumed run therefore replays exactly what an uninterrupted run would
have done, and only the adapter, optimizer and LR-scheduler states need to be checkpointed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoints import latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint
from .config import TrainConfig, save_config
from .losses import LossTerms, cat_loss, denoising_target, min_snr_weights, prior_preservation_loss
from .models import add_lora, configured_resolution, load_base, lora_parameters, native_resolution, save_lora


class TrainCallback:
    """Hooks for notebooks (live loss curves, sample grids). Override what you need."""

    def on_step(self, step: int, logs: dict) -> None: ...
    def on_validation(self, step: int, images: dict[str, list]) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    class_images_s: float = 0.0  # DreamBooth's up-front cost


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1)


class _TextCache:
    """Caption -> encoder hidden states; the text encoder is frozen, so each caption is encoded once."""

    def __init__(self, tokenizer, text_encoder, device):
        self.tok, self.te, self.device, self.cache = tokenizer, text_encoder, device, {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            ids = self.tok(new, padding="max_length", max_length=self.tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            hs = self.te(ids.to(self.device))[0]  # (n, L, D)
            self.cache.update(zip(new, hs))
        return torch.stack([self.cache[c] for c in captions])  # (B, L, D)


def generate_class_images(pipe, class_prompt: str, n: int, folder: Path, resolution: int) -> list[Path]:
    """DreamBooth's class images: generated once by the base model, cached on disk with a manifest, and reused."""
    from .sample import generate, save_image_atomic

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    meta = {"prompt": class_prompt, "model": str(getattr(pipe, "name_or_path", "")), "resolution": resolution}
    have = json.loads(manifest.read_text()) if manifest.exists() else None
    paths = [folder / f"class_{i:04d}.png" for i in range(n)]
    if have and {k: have.get(k) for k in meta} == meta and all(p.exists() for p in paths):
        return paths
    if have and {k: have.get(k) for k in meta} != meta:
        raise FileExistsError(f"{folder} holds class images for {have}, not {meta}; choose another class_images_dir")
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    for k in range(0, len(missing), 64):
        chunk = missing[k : k + 64]
        imgs = generate(pipe, [class_prompt], [10_000 + i for i in chunk], progress=False)[0]
        for i, im in zip(chunk, imgs):
            save_image_atomic(im, paths[i])
    manifest.write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def _load_class_tensors(paths: list[Path], resolution: int) -> torch.Tensor:
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for p in paths])
    return torch.from_numpy(arr).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, R, R)


def train(cfg: TrainConfig, resume: bool = False, callbacks: list[TrainCallback] | tuple = ()) -> TrainResult:
    """Train one adapter as configured; returns where it was saved and the loss history."""
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    from .dataset import ConceptDataset

    if not cfg.concepts:
        raise ValueError("TrainConfig.concepts is empty: add at least one ConceptConfig(folder, trigger, class_word)")
    t_start = time.time()
    _check_tracker(cfg.report_to)
    # every concept-data problem surfaces now, not after loading the base model (gigabytes for SD 1.5); the trigger
    # against the model's tokenizer (and the image size, when only the weights know the resolution) is checked below
    early = cfg.resolution or configured_resolution(cfg.base_model) or 1
    ConceptDataset([c.__dict__ for c in cfg.concepts], resolution=early, cat_prompt=cfg.cat_prompt, seed=cfg.seed)
    out, ckpt = prepare_output_dir(cfg.output_dir, cfg.resume_from_checkpoint or ("latest" if resume else None))
    acc = _make_accelerator(cfg, out)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    pipe = load_base(cfg.base_model, device=acc.device)
    resolution = cfg.resolution or native_resolution(pipe)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (unet, vae, te):
        m.requires_grad_(False)

    dataset = ConceptDataset([c.__dict__ for c in cfg.concepts], resolution=resolution, center_crop=cfg.center_crop,
                             random_flip=cfg.random_flip, cat_prompt=cfg.cat_prompt, seed=cfg.seed, tokenizer=tok)
    class_images, class_prompts, class_s = None, None, 0.0
    if cfg.regime == "ppl" or (cfg.regime == "cat" and cfg.cat_anchor == "class"):  # before the adapter exists: the base model draws the class
        t0 = time.time()
        prompts = sorted({cfg.class_prompt or f"a {c.class_word}" for c in cfg.concepts})
        folder = Path(cfg.class_images_dir) if cfg.class_images_dir else out / "class_images"
        paths, class_prompts = [], []
        for prompt in prompts:
            sub = folder if len(prompts) == 1 else folder / prompt.replace(" ", "_")
            got = generate_class_images(pipe, prompt, cfg.num_class_images, sub, resolution)
            paths += got
            class_prompts += [prompt] * len(got)
        class_images = _load_class_tensors(paths, resolution)
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
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer=opt, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
    unet, opt, lr_sched = acc.prepare(unet, opt, lr_sched)

    start = 0
    history: list[dict] = []
    if ckpt is not None:
        start, history = load_checkpoint(ckpt, unet=acc.unwrap_model(unet), te=te if cfg.train_text_encoder else None, opt=opt,
                                         lr_sched=lr_sched, scaler=acc.scaler)
    if ckpt is None or not (out / "config.yaml").exists():
        save_config(cfg, out / "config.yaml")
    if cfg.report_to != "none":
        acc.init_trackers("catlab", config=_tracker_config(cfg), init_kwargs={"wandb": {"name": out.name, "dir": str(out)}})

    text = _TextCache(tok, te, acc.device) if not cfg.train_text_encoder else None
    bar = tqdm(range(start, cfg.steps), desc=f"train [{cfg.regime}]", initial=start, total=cfg.steps, disable=not acc.is_local_main_process)
    last_ckpt = latest_checkpoint(out)
    log_path = out / "metrics.jsonl"
    unet.train()
    try:
        for step in bar:
            t_step = time.time()
            terms = _train_step(cfg, step, acc, unet, vae, te, tok, text, noise_sched, dataset, class_images,
                                class_prompts, weight_dtype)
            if not torch.isfinite(terms.loss.detach()):
                raise FloatingPointError(f"loss became {terms.loss.item()} at step {step}; training stopped. Last good checkpoint: "
                                         f"{last_ckpt or 'none'}. Lower learning_rate or use mixed_precision='no', then resume.")
            acc.backward(terms.loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)  # the trainable (LoRA) parameters, not the frozen base
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            logs = {"step": step + 1, **terms.as_floats(), "lr": lr_sched.get_last_lr()[0], "step_s": time.time() - t_step}
            history.append(logs)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if acc.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                with log_path.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
                acc.log({k: v for k, v in logs.items() if k != "step"}, step=step + 1)
            for cb in callbacks:
                cb.on_step(step + 1, logs)
            if cfg.validate_every and (step + 1) % cfg.validate_every == 0 and acc.is_main_process:
                # accelerate's mixed-precision wrapper returns fp32 from the UNet; the VAE and text encoder are in
                # fp16/bf16, so the pipeline runs under the same autocast as training (diffusers' scripts do the same)
                with acc.autocast():
                    _validate(cfg, acc, pipe, acc.unwrap_model(unet), step + 1, out, callbacks)
            if acc.is_main_process and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                last_ckpt = _checkpoint(cfg, acc, out, step + 1, pipe, unet, te, opt, lr_sched, history)
    finally:
        for tracker in acc.trackers:  # flush and close the event files even when a run stops early
            tracker.finish()
    acc.wait_for_everyone()
    adapter_dir = out / "adapter"
    if acc.is_main_process:
        pipe.unet = acc.unwrap_model(unet)
        save_lora(pipe, adapter_dir, metadata=adapter_metadata(cfg), overwrite=True)
    result = TrainResult(out, adapter_dir, history, time.time() - t_start, class_s)
    for cb in callbacks:
        cb.on_end(result)
    return result


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


def _checkpoint(cfg, acc, out, step, pipe, unet, te, opt, lr_sched, history) -> Path:
    unwrapped = acc.unwrap_model(unet)

    def write_adapter(folder: Path) -> None:
        pipe.unet = unwrapped
        save_lora(pipe, folder, metadata=adapter_metadata(cfg, step), overwrite=True)

    return save_checkpoint(out, step, unet=unwrapped, te=te if cfg.train_text_encoder else None, opt=opt, lr_sched=lr_sched,
                           history=history, scaler=acc.scaler, write_adapter=write_adapter, keep=cfg.checkpoints_total_limit)


def _train_step(cfg, step, acc, unet, vae, te, tok, text, noise_sched, dataset, class_images, class_prompts, weight_dtype) -> LossTerms:
    rng = np.random.default_rng(_step_seed(cfg.seed, step, acc.process_index))
    torch.manual_seed(_step_seed(cfg.seed, step, 1 + acc.process_index))  # LoRA dropout
    dataset.set_epoch(step)
    replace = cfg.batch_size > len(dataset)  # without replacement when possible: repeats would share one augmentation
    items = [dataset[int(i)] for i in rng.choice(len(dataset), size=cfg.batch_size, replace=replace)]
    pixels = torch.stack([it["pixel_values"] for it in items])  # (B, 3, R, R)
    captions = [it["caption"] for it in items]
    free = [it["caption_free"] for it in items]
    n_inst = len(items)
    anchored = cfg.regime == "cat" and cfg.cat_anchor == "class"
    if anchored:  # the CAT rows look at the base model's own class images, captioned with their class prompt
        ai = rng.integers(len(class_images), size=cfg.batch_size)
        pixels = torch.cat([pixels, class_images[ai]])  # (2B, 3, R, R): concept images, then anchors
        free = [class_prompts[i] for i in ai]
    if cfg.regime == "cat" and cfg.cat_null_share > 0:
        # classifier-free guidance samples with eps(c) and eps(""): an adapter that shifts eps("") while CAT holds
        # eps(c_free) moves guided class samples *away* from the concept; holding eps("") too prevents that
        n_null = round(len(free) * cfg.cat_null_share)
        free = [""] * n_null + free[n_null:]
    if class_images is not None and not anchored:
        ci = rng.integers(len(class_images), size=cfg.batch_size)
        pixels = torch.cat([pixels, class_images[ci]])  # instance then class images, one forward
        captions = captions + [class_prompts[i] for i in ci]
    g = torch.Generator().manual_seed(_step_seed(cfg.seed, step, 2 + acc.process_index))
    device = acc.device
    with torch.no_grad():
        posterior = vae.encode(pixels.to(device, weight_dtype)).latent_dist
        eps_latent = torch.randn(posterior.mean.shape, generator=g).to(device, weight_dtype)
        latents = (posterior.mean + posterior.std * eps_latent) * vae.config.scaling_factor  # (B, 4, h, w)
    noise = torch.randn(latents.shape, generator=g).to(device, latents.dtype)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), generator=g).to(device)
    noisy = noise_sched.add_noise(latents, noise, t)
    target = denoising_target(noise_sched, latents, noise, t)
    if text is not None:
        cond = text(captions).to(weight_dtype)
        cond_free = text(free).to(weight_dtype)
    else:
        ids = tok(captions + free, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        hs = te(ids.to(device))[0]
        cond, cond_free = hs[: len(captions)], hs[len(captions):]
    weights = min_snr_weights(noise_sched, t, cfg.snr_gamma) if cfg.snr_gamma else None
    with acc.accumulate(unet), acc.autocast():
        if cfg.regime == "ppl":
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
            return prior_preservation_loss(pred, target, n_inst, cfg.prior_loss_weight, weights)
        lam = cfg.cat_lambda if cfg.regime == "cat" else 0.0
        if lam and cfg.cat_every > 1:  # amortised CAT: every k-th step, weighted by k so the expected penalty is unchanged
            lam = lam * cfg.cat_every if step % cfg.cat_every == 0 else 0.0
        if anchored:  # concept rows train the trigger, anchor rows carry the CAT term
            return cat_loss(unet, noisy[:n_inst], t[:n_inst], cond, cond_free, target[:n_inst], lam=lam,
                            weights=None if weights is None else weights[:n_inst], anchors=(noisy[n_inst:], t[n_inst:]))
        return cat_loss(unet, noisy, t, cond, cond_free, target, lam=lam, weights=weights)


def adapter_metadata(cfg: TrainConfig, step: int | None = None) -> dict:
    """What the adapter files record about the run (catlab_adapter.json and both safetensors headers)."""
    return {"trigger": ",".join(c.trigger for c in cfg.concepts), "class_word": ",".join(c.class_word for c in cfg.concepts),
            "base_model": cfg.base_model, "regime": cfg.regime, "cat_lambda": cfg.cat_lambda, "steps": cfg.steps if step is None else step}


def validation_prompts(cfg: TrainConfig) -> list[str]:
    prompts = []
    for c in cfg.concepts:
        prompts += [f"a {c.trigger} {c.class_word}", f"a {c.class_word}"]
    return prompts


@torch.no_grad()
def _validate(cfg, acc, pipe, unet, step, out, callbacks) -> None:
    from .sample import generate, image_grid, save_image_atomic

    was_training = unet.training
    unet.eval()
    pipe.unet = unet
    prompts = validation_prompts(cfg)
    images = generate(pipe, prompts, cfg.validation_seeds, progress=False)
    save_image_atomic(image_grid(images, prompts, [f"seed {s}" for s in cfg.validation_seeds], title=f"step {step}"),
                      out / "validation" / f"step-{step:06d}.png")
    unet.train(was_training)
    _log_images(acc, prompts, images, cfg.validation_seeds, step)
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
