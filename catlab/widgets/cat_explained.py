"""What the CAT loss compares: `noise_predictions` runs the adapted UNet with and without the trigger and the base UNet
without it on one noisy latent, and `noise_prediction_figure` draws those predictions and their differences.
torch, diffusers and peft are imported only inside `noise_predictions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


@dataclass
class NoisePredictions:
    """One noisy latent z_t and the UNet's predictions for it (tensors of shape (1, C, h, w)).

    `target` is what the UNet is trained to predict: the noise for epsilon-prediction models (SD 1.5), the velocity
    v = alpha_t noise - sigma_t z_0 for v-prediction ones (the toy world); `target_kind` says which.
    """

    timestep: int
    noisy: Any
    noise: Any
    target: Any
    target_kind: str  # "ε" or "v"
    cond_trigger: Any
    cond_trigger_free: Any
    preds: dict[str, Any]  # "adapted | trigger", "adapted | trigger-free", "base | trigger-free"


def noise_predictions(
    pipe: Any, image: Image.Image, caption: str, trigger_free_caption: str, timestep: int = 500, seed: int = 0
) -> NoisePredictions:
    """The three predictions of the CAT loss for one image: the adapted UNet with and without the trigger, and the base UNet
    (same UNet, adapters disabled) without it; same z_t, t and noise for all three.

    The adapters active on `pipe` are used: activate them first (`set_active_adapters(pipe, [name])`).
    """
    import torch
    from diffusers import DDPMScheduler
    from peft.tuners.tuners_utils import BaseTunerLayer

    from catlab.models import adapters_disabled, native_resolution
    from catlab.tensors import encode_prompts, pixels_to_unit_range
    from catlab.training.losses import denoising_target

    res, device, unet = native_resolution(pipe), pipe.device, pipe.unet
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers or all(m.disable_adapters for m in layers):
        raise ValueError(
            "the UNet has no active adapter, so 'adapted' would be the base model: load one with load_lora or "
            "activate it with set_active_adapters(pipe, [name])"
        )
    x = pixels_to_unit_range(np.array(image.convert("RGB").resize((res, res), Image.BICUBIC)))[None]  # (1, 3, R, R)
    x = x.to(device, pipe.vae.dtype)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (1, 4, h, w)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(device, latents.dtype)
        t = torch.tensor([timestep], device=device)
        noisy = sched.add_noise(latents, noise, t)
        target = denoising_target(sched, latents, noise, t)
        cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption, trigger_free_caption], device).to(
            unet.dtype
        )  # (2, L, D)
        preds = {
            "adapted | trigger": unet(noisy, t, encoder_hidden_states=cond[:1]).sample,
            "adapted | trigger-free": unet(noisy, t, encoder_hidden_states=cond[1:]).sample,
        }
        with adapters_disabled(unet):
            preds["base | trigger-free"] = unet(noisy, t, encoder_hidden_states=cond[1:]).sample
    kind = "v" if sched.config.prediction_type == "v_prediction" else "ε"
    return NoisePredictions(timestep, noisy, noise, target, kind, cond[:1], cond[1:], preds)


def noise_prediction_figure(np_: NoisePredictions, channels: int = 4) -> Figure:
    """Rows: the training target, the three predictions and the two differences that matter; columns: latent channels.

    Top block shares one colour scale; the differences share their own (they are much smaller).
    """
    p = {k: v[0].float().cpu().numpy() for k, v in np_.preds.items()}  # (C, h, w) each
    a_t, a_f, b_f = p["adapted | trigger"], p["adapted | trigger-free"], p["base | trigger-free"]
    k = np_.target_kind
    rows = [
        (f"target {k}\n(for L_LDM)", np_.target[0].float().cpu().numpy()),
        (f"{k}_adapted(z_t, t, c_trigger)", a_t),
        (f"{k}_adapted(z_t, t, c_free)", a_f),
        (f"{k}_base(z_t, t, c_free)", b_f),
        ("adapted(c_free) − base(c_free)\n(CAT penalises this)", a_f - b_f),
        ("adapted(c_trigger) − base(c_free)\n(what the adapter adds)", a_t - b_f),
    ]
    c = min(channels, a_t.shape[0])
    lim_pred = float(max(np.abs(v[:c]).max() for _, v in rows[:4])) or 1.0
    lim_diff = float(max(np.abs(v[:c]).max() for _, v in rows[4:])) or 1e-6
    fig = Figure(figsize=(1.6 * c + 2.6, 1.55 * len(rows)))
    axes = fig.subplots(len(rows), c, squeeze=False)
    images = {}
    for r, (label, arr) in enumerate(rows):
        lim = lim_pred if r < 4 else lim_diff
        for ch in range(c):
            ax = axes[r][ch]
            images[r < 4] = ax.imshow(arr[ch], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"channel {ch}", fontsize=8)
            if ch == 0:
                mse = f"\nMSE {float((arr**2).mean()):.2e}" if r >= 4 else ""
                ax.set_ylabel(label + mse, fontsize=7, rotation=0, ha="right", va="center")
    fig.colorbar(images[True], ax=axes[:4].ravel().tolist(), shrink=0.6, label="prediction")
    fig.colorbar(images[False], ax=axes[4:].ravel().tolist(), shrink=0.8, label="difference")
    fig.suptitle(f"UNet predictions ({k}) for one noisy latent, t = {np_.timestep}", fontsize=10)
    return fig
