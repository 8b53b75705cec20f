"""Experiment: give the shipped toy UNet cross-attention at 8x8 too, and see whether an attention-only LoRA
can then learn a toy concept (docs/results.md, "attention at 8x8").

    python benchmarks/toyworld_grow_attention.py --out runs/grown --steps 2000
    CATLAB_TOYWORLD_DIR=runs/grown python benchmarks/toyworld_quality.py
    CATLAB_TOYWORLD_DIR=runs/grown python benchmarks/regime_sweep.py --targets to_q,to_k,to_v,to_out.0 --lr 5e-3 lora:0 cat:1

Instead of pretraining a new layout from scratch, the shipped UNet is *grown*: its 8x8 down and up blocks become
cross-attention blocks, every shipped weight is copied, and each new transformer's output projection starts at
zero, so the grown UNet computes exactly what the shipped one does (the script checks it) until fine-tuning
teaches the new attention to read the prompt (zero-initialised residual branches: Zhang et al. 2023, ControlNet,
arXiv 2302.05543). Fine-tuning uses the pretraining loss (v-prediction, min-SNR 5, EMA) with the text encoder
frozen. Writes a complete toy-world asset folder (the shipped one with the grown UNet) to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


def grow(unet):
    """The same UNet with cross-attention at 8x8 too; equal to `unet` until the new blocks are trained."""
    from diffusers import UNet2DConditionModel

    cfg = dict(unet.config)
    cfg["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    grown = UNet2DConditionModel.from_config(cfg)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or not all(".attentions." in k for k in missing):
        raise RuntimeError(
            f"shipped weights do not map onto the grown UNet: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    with torch.no_grad():
        for block in (grown.down_blocks[1], grown.up_blocks[1]):
            for attn in block.attentions:
                attn.proj_out.weight.zero_()
                attn.proj_out.bias.zero_()
    return grown


def add_finetune_args(ap: argparse.ArgumentParser) -> None:
    """The fine-tuning options this script shares with benchmarks/toyworld_rehead.py."""
    ap.add_argument("--out", required=True, help="new asset folder (must not exist)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--lr", type=float, default=5e-4, help="peak learning rate (cosine to 0.1x after 100 warm-up steps)"
    )
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--flip",
        type=float,
        default=0.5,
        help="share of training images mirrored left-right (pretraining used 0.5; 0 keeps left/right information)",
    )


def finetune(unet, args, log_name: str) -> None:
    """Fine-tune `unet` with the pretraining loss (v-prediction, min-SNR 5, EMA 0.998; text encoder frozen) on the
    pretraining data, and write the shipped asset folder with the EMA UNet to args.out (progress in out/log_name)."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from catlab.tensors import encode_prompts
    from catlab.toyworld import build
    from catlab.toyworld.assets import toyworld_path
    from catlab.toyworld.pretrain import draw_batch, encode_latents, v_prediction_loss
    from catlab.toyworld.world import make_world_dataset

    src, out = toyworld_path("pipeline"), Path(args.out)
    te = CLIPTextModel.from_pretrained(src / "text_encoder").requires_grad_(False).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(src / "tokenizer")
    images, specs = make_world_dataset(50_000, seed=args.seed)  # the pretraining data (PretrainConfig.n_images)
    latents = encode_latents(AutoencoderKL.from_pretrained(src / "vae"), images)
    spec_dicts = [asdict(s) for s in specs]
    sched = build.build_noise_scheduler()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warm = 100
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, args.steps - warm))))
        ),
    )
    rng = np.random.default_rng(args.seed + 123)
    shutil.copytree(src.parent, out, ignore=shutil.ignore_patterns("unet"))
    log = (out / log_name).open("w")
    t0 = time.time()
    for step in tqdm(range(args.steps), desc="fine-tuning the UNet", unit="step"):
        z0, caps = draw_batch(latents, spec_dicts, rng, args.batch, args.flip)  # (B, 4, 16, 16)
        with torch.no_grad():
            cond = encode_prompts(tok, te, caps)  # (B, L, D): the text encoder stays frozen
        loss = v_prediction_loss(unet, z0, cond, sched, min_snr_gamma=5.0)  # as in pretraining
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            for pe, pl in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pl, 1 - 0.998)
        if step % 25 == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), "elapsed_s": time.time() - t0}) + "\n")
            log.flush()
    ema.save_pretrained(out / "pipeline" / "unet")
    print(f"{args.steps} steps in {time.time() - t0:.0f} s; asset folder: {out}")


def start(description: str):
    """Parse the fine-tuning options and load the shipped UNet: (args, the shipped UNet)."""
    from diffusers import UNet2DConditionModel

    from catlab.toyworld.assets import toyworld_path

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(ap)
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"{args.out} exists; choose a new --out")
    torch.manual_seed(args.seed)
    return args, UNet2DConditionModel.from_pretrained(toyworld_path("pipeline") / "unet")


def max_output_gap(unet, shipped) -> tuple[float, float]:
    """Largest |unet - shipped| on one random batch, and the shipped output's largest magnitude."""
    z, t, c = (
        torch.randn(4, 4, 16, 16),
        torch.randint(0, 1000, (4,)),
        torch.randn(4, 12, shipped.config.cross_attention_dim),
    )
    with torch.no_grad():
        ref = shipped(z, t, encoder_hidden_states=c).sample
        return (unet(z, t, encoder_hidden_states=c).sample - ref).abs().max().item(), ref.abs().max().item()


def main() -> None:
    args, shipped = start(__doc__)
    if "CrossAttnDownBlock2D" in shipped.config.down_block_types[:-1]:
        raise SystemExit(
            "the toy UNet already has cross-attention at 8x8 (toy world v2). To grow v1 again, point "
            "CATLAB_TOYWORLD_DIR at the v1 assets, e.g. `git worktree add /tmp/v1 01b78ab` and "
            "CATLAB_TOYWORLD_DIR=/tmp/v1/catlab/assets/toyworld"
        )
    unet = grow(shipped)
    gap, _ = max_output_gap(unet, shipped)
    n_new = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in shipped.parameters())
    print(f"grown UNet: +{n_new:,} parameters; max |grown - shipped| before fine-tuning = {gap}")
    del shipped
    finetune(unet, args, "grow_log.jsonl")


if __name__ == "__main__":
    main()
