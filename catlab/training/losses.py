"""The training objectives: denoising, CAT, DreamBooth prior preservation. Stateless; each cites its paper.

Notation: z_0 clean latents, eps noise, t timesteps, z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,
c_T the caption embedding with the trigger, c_free the same caption without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from catlab.config import share_row_count
from catlab.models import adapters_disabled


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """eps for epsilon-prediction (Ho et al. 2020, arXiv 2006.11239); v for v-prediction (Salimans & Ho 2022, arXiv 2202.00512)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported; use 'epsilon' or 'v_prediction'")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556), for eps or v targets; (B,)."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma)
    return w / snr if scheduler.config.prediction_type == "epsilon" else w / (snr + 1)


def mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all elements, optionally weighted per sample."""
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))  # (B,)
    return (weights * per_sample).mean()


@dataclass
class LossTerms:
    loss: torch.Tensor  # what is back-propagated
    ldm: torch.Tensor  # denoising loss on the trigger captions
    cat: torch.Tensor | None = None  # CAT term (unweighted), when computed this step
    prior: torch.Tensor | None = None  # DreamBooth prior term (unweighted), when used

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items() if v is not None}


def cat_loss(unet, noisy: torch.Tensor, timesteps: torch.Tensor, cond_trigger: torch.Tensor, cond_trigger_free: torch.Tensor,
             target: torch.Tensor, lam: float = 1.0, cat_share: float = 1.0, weights: torch.Tensor | None = None,
             batched: bool = True, anchors: tuple[torch.Tensor, torch.Tensor] | None = None,
             guidance: float = 0.0, cond_null: torch.Tensor | None = None) -> LossTerms:
    """Contrastive Adapter Training (Park et al. 2024, arXiv 2404.07554):

        L = || eps_adapted(z_t, t, c_T) - target ||^2 + lam * || eps_adapted(z_t, t, c_free) - sg[eps_base(z_t, t, c_free)] ||^2

    with the same z_t, t and noise in both terms. The base prediction comes from the *same* UNet with its
    adapters disabled, under no_grad, so no second UNet is held in memory. The two adapted passes run as one
    batched forward (`batched=False` runs them separately, as the authors did: same result up to float rounding of
    batch-size-dependent kernels, about 1e-13; with a fresh adapter it makes the CAT term exactly 0).
    `cat_share` < 1 applies the CAT term to the first share of the batch only (cheaper).
    `anchors` = (z_t, t) of other images for the CAT rows, e.g. noised images the base model drew for the class
    (catlab's `cat_anchor: class`); default: the concept's own z_t and t, as the paper.
    lam = 0 is plain LoRA (and skips the extra passes).

    `guidance` = s > 1 holds what classifier-free guidance samples (Ho & Salimans 2022, arXiv 2207.12598),
    eps(null) + s * (eps(c_free) - eps(null)), instead of eps(c_free) alone (catlab's `cat_guidance`): each CAT row
    is also run on the empty caption (`cond_null`, (1, L, D) or (k, L, D)), and with d = adapted - base per caption,

        cat = || d(c_free) + (1 - s) / s * d(null) ||^2   (= the paper's term while eps(null) does not move)

    so the adapter may move eps(null) and eps(c_free) together as long as the guided class prediction stays.
    """
    if lam == 0:
        pred = unet(noisy, timesteps, encoder_hidden_states=cond_trigger).sample
        ldm = mse(pred, target, weights)
        return LossTerms(loss=ldm, ldm=ldm)
    b = noisy.shape[0]
    k = share_row_count(b, cat_share)  # samples that also get the CAT term
    z_free, t_free = (noisy[:k], timesteps[:k]) if anchors is None else (anchors[0][:k], anchors[1][:k])
    cond_free = cond_trigger_free[:k]
    if guidance:
        if guidance <= 1 or cond_null is None:
            raise ValueError(f"cat_loss: guidance={guidance} needs a scale > 1 and cond_null (the empty caption's text states)")
        z_free, t_free = torch.cat([z_free, z_free]), torch.cat([t_free, t_free])  # (2k, C, h, w): each row twice
        cond_free = torch.cat([cond_free, cond_null.expand(k, *cond_null.shape[1:])])  # (2k, L, D): c_free, then null
    if batched:
        z = torch.cat([noisy, z_free])  # (B + k, C, h, w)
        tt = torch.cat([timesteps, t_free])
        cond = torch.cat([cond_trigger, cond_free])  # (B + k, L, D)
        pred_all = unet(z, tt, encoder_hidden_states=cond).sample
        pred_trigger, pred_free = pred_all[:b], pred_all[b:]
    else:
        pred_trigger = unet(noisy, timesteps, encoder_hidden_states=cond_trigger).sample
        pred_free = unet(z_free, t_free, encoder_hidden_states=cond_free).sample
    inner = getattr(unet, "module", unet)  # under DDP the adapters live on the wrapped module
    with torch.no_grad(), adapters_disabled(inner):
        base_free = inner(z_free, t_free, encoder_hidden_states=cond_free).sample  # stop-gradient target
    ldm = mse(pred_trigger, target, weights)
    cat_weights = None if weights is None or anchors is not None else weights[:k]
    if guidance:
        d = pred_free - base_free  # (2k, C, h, w): adapted - base, c_free rows then null rows
        cat = mse(d[:k] + (1 - guidance) / guidance * d[k:], torch.zeros_like(d[:k]), cat_weights)
    else:
        cat = mse(pred_free, base_free, cat_weights)
    return LossTerms(loss=ldm + lam * cat, ldm=ldm, cat=cat)


def prior_preservation_loss(pred: torch.Tensor, target: torch.Tensor, n_instance: int, prior_weight: float = 1.0,
                            weights: torch.Tensor | None = None) -> LossTerms:
    """DreamBooth prior preservation (Ruiz et al. 2023, arXiv 2208.12242): the batch is instance images followed by
    class images the base model generated for the class prompt; L = L_instance + w * L_prior. One forward for both."""
    wi = None if weights is None else weights[:n_instance]
    wp = None if weights is None else weights[n_instance:]
    ldm = mse(pred[:n_instance], target[:n_instance], wi)
    prior = mse(pred[n_instance:], target[n_instance:], wp)
    return LossTerms(loss=ldm + prior_weight * prior, ldm=ldm, prior=prior)
