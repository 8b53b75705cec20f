"""Run folders and checkpoints: refuse to overwrite a run, find the checkpoint to resume, write and prune checkpoints.

A checkpoint holds no pickle: `state.safetensors` has the tensors (the LoRA weights of the UNet and, when trained, of
the text encoder, and the optimizer's per-parameter state) and `state.json` the rest (step, loss history, optimizer
hyper-parameters, LR-scheduler and grad-scaler state). `adapter/` beside them is the adapter as `save_lora` writes it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from catlab.files import replace_folder_atomically

STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
FORMAT = "catlab-checkpoint-1"


def checkpoint_dirs(out: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first (unfinished `.tmp` folders are not checkpoints)."""
    return sorted(p for p in (Path(out) / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = checkpoint_dirs(out)
    return ckpts[-1] if ckpts else None


def prepare_output_dir(output_dir: str | Path, resume_from: str | None) -> tuple[Path, Path | None]:
    """Create the run folder; returns it and the checkpoint to resume from (None: a new run).

    resume_from: None, "latest" (the newest checkpoint of this run), or a checkpoint folder (a path, or a name such as
    step-000300 under output_dir/checkpoints). A new run refuses a folder that already holds files."""
    out = Path(output_dir)
    ckpt = None
    if resume_from == "latest":
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(
                f"cannot resume: no checkpoint in {out / 'checkpoints'}; start a new run without "
                "resume (no --resume, resume_from_checkpoint: null)"
            )
    elif resume_from:
        ckpt = Path(resume_from).expanduser()
        if not ckpt.exists() and (out / "checkpoints" / resume_from).exists():
            ckpt = out / "checkpoints" / resume_from
        if not ckpt.is_dir():
            raise FileNotFoundError(
                f"resume_from_checkpoint={resume_from!r}: {ckpt} does not exist; pass a "
                "checkpoints/step-* folder of a run, or 'latest'"
            )
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"output folder {out} already holds a run; pass resume=True (--resume, or "
            "resume_from_checkpoint: latest) to continue it, or choose another output_dir"
        )
    if ckpt is not None and not (ckpt / STATE_JSON).is_file():
        raise FileNotFoundError(
            f"{ckpt} has no {STATE_JSON}: it is not a catlab checkpoint, or one from an earlier "
            "catlab that pickled its state (state.pt), which is not loaded; start a new run"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out, ckpt


@dataclass
class Trained:
    """What a checkpoint saves and restores: the trained weights and the optimiser's and schedule's states."""

    unet: Any  # the UNet with its LoRA (unwrapped)
    te: Any  # the text encoder when its LoRA trains, else None
    opt: Any
    lr_sched: Any
    scaler: Any = None  # the fp16 gradient scaler, if any
    trigger_vectors: Any = None  # adapter name -> (T, D) trigger embeddings (trigger_embedding_lr), or None


def save_checkpoint(
    out: Path, step: int, trained: Trained, history: list[dict], write_adapter=None, keep: int | None = None
) -> Path:
    """Write checkpoints/step-NNNNNN atomically, then delete the oldest beyond `keep` (None: keep all).
    `write_adapter(folder)` writes the adapter beside the state."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet, te, opt, lr_sched, scaler = trained.unet, trained.te, trained.opt, trained.lr_sched, trained.scaler
    trigger_vectors = trained.trigger_vectors
    tensors = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    if te is not None:
        tensors.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(te).items()})
    tensors.update({f"trigger.{k}": v for k, v in (trigger_vectors or {}).items()})
    opt_state = opt.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in opt_state["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    state = {
        "format": FORMAT,
        "step": step,
        "history": history,
        "optimizer": {"param_groups": opt_state["param_groups"], "scalars": scalars},
        "lr_scheduler": lr_sched.state_dict(),
        "grad_scaler": scaler.state_dict() if scaler else None,
    }
    final = out / "checkpoints" / f"step-{step:06d}"

    def write(tmp: Path) -> None:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(cpu, tmp / STATE_TENSORS, metadata={"format": FORMAT})
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=1) + "\n")
        if write_adapter is not None:
            write_adapter(tmp / "adapter")

    final.parent.mkdir(parents=True, exist_ok=True)
    replace_folder_atomically(final, write)
    if keep is not None:
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old)
    return final


def load_checkpoint(ckpt: Path, trained: Trained) -> tuple[int, list[dict]]:
    """Restore what `save_checkpoint` wrote into the prepared objects; returns (step, history)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    unet, te, opt, lr_sched, scaler = trained.unet, trained.te, trained.opt, trained.lr_sched, trained.scaler
    trigger_vectors = trained.trigger_vectors
    state = json.loads((ckpt / STATE_JSON).read_text())
    tensors = load_file(ckpt / STATE_TENSORS)
    parts: dict[str, dict] = {"unet": {}, "text_encoder": {}, "optimizer": {}, "trigger": {}}
    for key, v in tensors.items():
        part, _, rest = key.partition(".")
        parts[part][rest] = v
    set_peft_model_state_dict(unet, parts["unet"])
    if parts["text_encoder"] and te is not None:
        set_peft_model_state_dict(te, parts["text_encoder"])
    for name, vectors in (trigger_vectors or {}).items():
        if name not in parts["trigger"]:
            raise ValueError(f"{ckpt} has no trained trigger embedding: it was saved with trigger_embedding_lr: 0")
        with torch.no_grad():
            vectors.copy_(parts["trigger"][name])
    per_param: dict[int, dict] = {}
    for key, v in parts["optimizer"].items():
        idx, _, name = key.partition(".")
        per_param.setdefault(int(idx), {})[name] = v
    for idx, values in state["optimizer"]["scalars"].items():
        per_param.setdefault(int(idx), {}).update(values)
    groups = state["optimizer"]["param_groups"]
    for saved, now in zip(groups, opt.param_groups):  # JSON has no tuples (AdamW's betas)
        saved.update({k: tuple(v) for k, v in saved.items() if isinstance(now.get(k), tuple)})
    opt.load_state_dict({"state": per_param, "param_groups": groups})
    lr_sched.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return state["step"], state["history"]
