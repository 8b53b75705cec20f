"""Starting a training run (`start_run`): the data checked before any model loads, the base model frozen in the
training precision, the class images, fresh adapters with their optimiser and LR schedule, the accelerator and its
trackers, and a checkpoint restored when the run resumes. What `training.loop` steps through comes from here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from catlab.config import TrainConfig, save_config
from catlab.environment import describe_environment
from catlab.files import write_json_atomic, write_text_atomic
from catlab.models import add_lora, configured_resolution, load_base, lora_parameters, native_resolution
from catlab.models.trigger_embedding import initial_trigger_vectors, trigger_embedding_of, wrap_token_embedding
from catlab.training import class_images
from catlab.training.checkpoints import Trained, latest_checkpoint, load_checkpoint, prepare_output_dir
from catlab.training.state import TextStates, TrainingRun

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's attention projections, as diffusers


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
    with torch.random.fork_rng(devices=rng_devices()):  # loading draws from torch's global RNG: not the caller's
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
    with torch.random.fork_rng(devices=rng_devices()):  # the caller's RNG stays as it was
        torch.manual_seed(cfg.seed)  # the LoRA's random A matrices depend on it
        add_lora(pipe.unet, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
        if cfg.train_text_encoder:
            add_lora(pipe.text_encoder, cfg.rank, cfg.lora_alpha, cfg.lora_dropout, TEXT_ENCODER_TARGETS)
    if weight_dtype != torch.float32:
        cast_training_params(trained, dtype=torch.float32)  # LoRA weights train in fp32, frozen ones stay as they are
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    params = [p for m in trained for p in lora_parameters(m)]
    groups = [{"params": params}]  # first: the LoRA weights (loop.drop_lora_gradients counts on it)
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
    start, run.history = load_checkpoint(ckpt, trained_parts(run))
    return start


def _open_logs(run: TrainingRun, start: int, new_run: bool) -> None:
    """config.yaml of a new run; on resume, metrics.jsonl cut back to the checkpoint's step so that every step is
    logged once (tensorboard hides its own later events: purge_step); the trackers."""
    cfg, out = run.cfg, run.out
    if run.acc.is_main_process:
        if new_run or not (out / "config.yaml").exists():
            save_config(cfg, out / "config.yaml")
        _truncate_metrics(out / "metrics.jsonl", start)
        _record_environment(out / "environment.json", start)
    if cfg.report_to != "none":
        kwargs = {
            "wandb": {"name": out.name, "dir": str(out)},
            "tensorboard": {"purge_step": start + 1} if start else {},
        }
        run.acc.init_trackers("catlab", config=_tracker_config(cfg), init_kwargs=kwargs)


def _record_environment(path: Path, start: int) -> None:
    """environment.json: one entry per start of the run, the step it started at and what it ran on
    (`catlab.environment`): a run resumed on another kind of machine says from which step its digits are that
    machine's."""
    try:
        starts = json.loads(path.read_text()) if path.exists() else []
    except ValueError:  # not ours any more: keep its text in the record rather than lose it
        starts = [{"unreadable_earlier_record": path.read_text()[:2000]}]
    write_json_atomic(path, [*starts, {"started_at_step": start, **describe_environment()}])


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
        **({"trigger_embedding_first": cfg.trigger_embedding_first} if cfg.trigger_embedding_first else {}),
        # which weights exactly, only when set: the hub revision, the file variant, a replaced VAE
        **{
            k: v
            for k, v in (("base_revision", cfg.revision), ("base_variant", cfg.variant), ("vae", cfg.vae))
            if v is not None
        },
    }


def trained_parts(run: TrainingRun) -> Trained:
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


def rng_devices() -> list[int]:
    """The CUDA devices whose RNG torch.manual_seed reseeds (none on a CPU): what fork_rng saves and restores."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
