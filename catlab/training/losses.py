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
    """eps for epsilon-prediction (Ho et al. 2020, arXiv 2006.11239); v for v-prediction (Salimans & Ho 2022,
    arXiv 2202.00512)."""
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


@dataclass(frozen=True)
class CatTerm:
    """Where CAT's term is taken and what it holds, beyond the paper's default (every row, its own noisy latent,
    eps(c_free) alone, the text states of the adapted prediction)."""

    share: float = 1.0  # the first share of the rows carry the term (cat_share; < 1 is cheaper)
    # (z_t, t) of the rows that carry the term instead (cat_anchor), each row once; share is then not used
    anchors: tuple[torch.Tensor, torch.Tensor] | None = None
    guidance: float = 0.0  # s > 1: hold the guided prediction eps(null) + s (eps(c_free) - eps(null)) (cat_guidance)
    cond_null: torch.Tensor | None = None  # (1, L, D): the empty caption's text states, for the guided term
    # (c_free, null) text states of the *base* text encoder for the target, when the text encoder trains
    base_text: tuple[torch.Tensor, torch.Tensor | None] | None = None


def cat_loss(
    unet,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    cond_trigger: torch.Tensor,
    cond_trigger_free: torch.Tensor,
    target: torch.Tensor,
    lam: float = 1.0,
    weights: torch.Tensor | None = None,
    term: CatTerm | None = None,
    batched: bool = True,
) -> LossTerms:
    """Contrastive Adapter Training (Park et al. 2024, arXiv 2404.07554):

        L = || eps_adapted(z_t, t, c_T) - target ||^2
            + lam * || eps_adapted(z_t, t, c_free) - sg[eps_base(z_t, t, c_free)] ||^2

    with the same z_t, t and noise in both terms. The base prediction comes from the *same* UNet with its
    adapters disabled, under no_grad, so no second UNet is held in memory. The two adapted passes run as one
    batched forward (`batched=False` runs them separately, as the authors did: same result up to float rounding of
    batch-size-dependent kernels, about 1e-13; with a fresh adapter it makes the CAT term exactly 0).
    lam = 0 is plain LoRA (and skips the extra passes). `term` (a `CatTerm`) says where the term is taken:
    `share` < 1 puts it on the first share of the batch only; `anchors` = (z_t, t) of other images for those rows,
    e.g. noised images the base model drew for the class (catlab's `cat_anchor: class`).

    `term.guidance` = s > 1 holds what classifier-free guidance samples (Ho & Salimans 2022, arXiv 2207.12598),
    eps(null) + s * (eps(c_free) - eps(null)), instead of eps(c_free) alone (catlab's `cat_guidance`): each CAT row
    is also run on the empty caption (`term.cond_null`), and with d = adapted - base per caption,

        cat = || d(c_free) + (1 - s) / s * d(null) ||^2   (= the paper's term while eps(null) does not move)

    so the adapter may move eps(null) and eps(c_free) together as long as the guided class prediction stays.
    `term.base_text` keeps the target the base model's, text encoder included, when the text encoder trains.
    """
    if lam == 0:
        pred = unet(noisy, timesteps, encoder_hidden_states=cond_trigger).sample
        ldm = mse(pred, target, weights)
        return LossTerms(loss=ldm, ldm=ldm)
    term = term or CatTerm()
    b = noisy.shape[0]
    # samples that also get the CAT term: the first share of the batch, or every anchor row
    k = share_row_count(b, term.share) if term.anchors is None else term.anchors[0].shape[0]
    z_free, t_free, cond_free, cond_base = _cat_rows(noisy, timesteps, cond_trigger_free, k, term)
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
        base_free = inner(z_free, t_free, encoder_hidden_states=cond_base).sample  # stop-gradient target
    ldm = mse(pred_trigger, target, weights)
    cat_weights = None if weights is None or term.anchors is not None else weights[:k]
    cat = _cat_term(pred_free, base_free, term.guidance, cat_weights)
    return LossTerms(loss=ldm + lam * cat, ldm=ldm, cat=cat)


def _cat_rows(noisy: torch.Tensor, timesteps: torch.Tensor, cond_free: torch.Tensor, k: int, term: CatTerm) -> tuple:
    """(z_t, t, adapted text states, base text states) of the k CAT rows, each row twice (c_free, then the empty
    caption) for the guided term."""
    z, t = (noisy[:k], timesteps[:k]) if term.anchors is None else (term.anchors[0][:k], term.anchors[1][:k])
    if term.guidance and (term.guidance <= 1 or term.cond_null is None):
        raise ValueError(
            f"cat_loss: guidance={term.guidance} needs a scale > 1 and cond_null (the empty caption's text states)"
        )
    null = term.cond_null if term.guidance else None
    if term.guidance:
        z, t = torch.cat([z, z]), torch.cat([t, t])  # (2k, C, h, w): each row twice
    adapted = _free_rows(cond_free[:k], null)  # (k or 2k, L, D)
    if term.base_text is None:
        return z, t, adapted, adapted
    return z, t, adapted, _free_rows(term.base_text[0][:k], term.base_text[1] if term.guidance else None)


def _cat_term(pred: torch.Tensor, base: torch.Tensor, guidance: float, weights: torch.Tensor | None) -> torch.Tensor:
    """CAT's term on its rows: ||adapted - base||^2, or for the guided term (c_free rows, then null rows), with
    d = adapted - base, ||d(c_free) + (1 - s) / s * d(null)||^2."""
    if not guidance:
        return mse(pred, base, weights)
    d = pred - base  # (2k, C, h, w)
    k = d.shape[0] // 2
    return mse(d[:k] + (1 - guidance) / guidance * d[k:], torch.zeros_like(d[:k]), weights)


def _free_rows(cond_free: torch.Tensor, cond_null: torch.Tensor | None) -> torch.Tensor:
    """The CAT rows' text states: c_free (k, L, D), then, for the guided term, the empty caption's for each row."""
    if cond_null is None:
        return cond_free
    return torch.cat([cond_free, cond_null.expand(cond_free.shape[0], *cond_null.shape[1:])])  # (2k, L, D)


def prior_preservation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    n_instance: int,
    prior_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> LossTerms:
    """DreamBooth prior preservation (Ruiz et al. 2023, arXiv 2208.12242): the batch is instance images followed by
    class images the base model generated for the class prompt; L = L_instance + w * L_prior. One forward for both."""
    wi = None if weights is None else weights[:n_instance]
    wp = None if weights is None else weights[n_instance:]
    ldm = mse(pred[:n_instance], target[:n_instance], wi)
    prior = mse(pred[n_instance:], target[n_instance:], wp)
    return LossTerms(loss=ldm + prior_weight * prior, ldm=ldm, prior=prior)
