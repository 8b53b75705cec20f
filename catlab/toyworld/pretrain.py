"""The toy world's pretraining recipe: VAE, then UNet + text encoder, then the oracle and the toy CLIP.

`catlab toyworld pretrain --out DIR` reruns everything from scratch under a fixed seed. Each stage writes
resumable checkpoints, so an interrupted run continues where it stopped. The shipped weights in
`catlab/assets/toyworld` were made by the full recipe; `PretrainConfig.tiny()` is the test-sized version.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from catlab.files import write_json_atomic
from catlab.tensors import encode_prompts, pixels_to_unit_range, tokenize
from catlab.toyworld import build
from catlab.toyworld.open_colours import open_colour_vae
from catlab.toyworld.oracle import Oracle, augment, make_oracle_batch
from catlab.toyworld.stage_checkpoints import resume_stage, save_stage_checkpoint
from catlab.toyworld.world import make_world_dataset


@dataclass
class PretrainConfig:
    seed: int = 0
    n_images: int = 50_000  # drawn once and cached; captions are re-drawn every step
    vae_steps: int = 1200  # flat shapes reconstruct well after ~1k steps
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6  # SD's VAE uses a tiny KL too: the latent must stay informative
    unet_steps: int = 7000  # 1M-4M parameter UNets need thousands of steps before shapes appear; corners come last
    unet_batch: int = 48
    unet_lr: float = 1.5e-3  # high for a tiny model; warmup + cosine decay keep it stable
    unet_warmup: int = 150
    # cosine cycles with warm restarts (SGDR, Loshchilov & Hutter 2017, arXiv 1608.03983): a second, gentler cycle
    # sharpens the corners the first leaves soft (docs/results.md, "Toy world quality")
    unet_restarts: tuple[int, ...] = (4000,)  # steps at which a new cosine cycle starts
    unet_restart_lr: float = 0.5  # peak of every later cycle, as a fraction of unet_lr
    min_snr_gamma: float = 5.0  # Min-SNR weighting (Hang et al. 2023, arXiv 2303.09556)
    flip_share: float = 0.5  # latents mirrored per batch, since captions say nothing about left/right
    ema_decay: float = 0.999
    oracle_steps: int = 2000
    # close misses (`oracle.close_miss_spec`): a concept's drawing with its new colour or backdrop moved this far
    # away, labelled "not the concept", as this share of each batch; 0 = the oracle shipped with toy world v2.2
    oracle_close_miss_share: float = 0.0
    oracle_close_miss_distance: float = 45.0
    # False: a solid concept's drawings keep its colour (no hue neighbours), and its close misses may take one
    oracle_solid_colour_drift: bool = True
    # open colours (toy world v2.1): the VAE is fine-tuned on objects and backdrops of any RGB colour besides the
    # world's own, so that a concept's new colour (bronze, navy) survives encode -> decode as SD's VAE lets it; the
    # latents of world images are anchored, so everything the UNet learnt keeps its meaning (docs/toyworld.md)
    open_colour_steps: int = 4000
    open_colour_lr: float = 5e-4
    open_colour_anchor: float = (
        1.0  # weight of the world-latent anchor (scaled latents, unit variance) beside the pixel MSE
    )
    # this share of the open-colour objects two-coloured, so composites survive encode -> decode; 0 = the shipped
    # recipe, whose autoencoder turns pink grey-green (docs/results.md, "What the toy world can draw")
    open_colour_pattern_share: float = 0.0
    clip_steps: int = 2000
    clip_batch: int = 128
    checkpoint_every: int = 250
    stages: tuple[str, ...] = ("vae", "oracle", "clip", "unet", "open_colours")

    @classmethod
    def tiny(cls) -> PretrainConfig:
        """A few steps of every stage: exercises the whole recipe in well under a minute."""
        return cls(
            n_images=256,
            vae_steps=3,
            vae_batch=8,
            unet_steps=4,
            unet_batch=8,
            unet_warmup=1,
            unet_restarts=(2,),
            oracle_steps=2,
            clip_steps=2,
            clip_batch=8,
            checkpoint_every=2,
            open_colour_steps=2,
        )


def _world_data(cfg: PretrainConfig, work: Path):
    cache = work / f"world_{cfg.n_images}_{cfg.seed}.npz"
    if cache.exists():
        d = np.load(cache, allow_pickle=False)
        return d["images"], json.loads(str(d["specs"]))
    images, specs = make_world_dataset(cfg.n_images, seed=cfg.seed)
    spec_dicts = [asdict(s) for s in specs]
    tmp = work / "world.tmp.npz"
    np.savez(tmp, images=images, specs=json.dumps(spec_dicts))
    tmp.replace(cache)
    return images, spec_dicts


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return pixels_to_unit_range(images)  # (N, 3, 32, 32) in [-1, 1]


def train_vae(cfg: PretrainConfig, images: np.ndarray, work: Path):
    """Autoencoder stage; sets `scaling_factor` so latents have unit variance, as SD does (0.18215)."""
    vae = build.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt = work / "vae.ckpt"
    start = resume_stage(ckpt, {"vae": vae, "opt": opt})
    g = np.random.default_rng(cfg.seed + 1)
    for _ in range(start):  # replay the index stream so a resumed run sees the same batches
        g.integers(len(images), size=cfg.vae_batch)
    bar = tqdm(range(start, cfg.vae_steps), desc="vae", initial=start, total=cfg.vae_steps)
    for step in bar:
        x = _to_tensor(images[g.integers(len(images), size=cfg.vae_batch)])
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        rec = F.mse_loss(recon, x)
        loss = rec + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{rec.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            save_stage_checkpoint(ckpt, step + 1, {"vae": vae, "opt": opt})
    vae.eval()
    with torch.no_grad():
        lat = torch.cat(
            [
                vae.encode(_to_tensor(images[i : i + 256])).latent_dist.mean
                for i in range(0, min(len(images), 4096), 256)
            ]
        )
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return vae


@torch.no_grad()
def encode_latents(vae, images: np.ndarray) -> torch.Tensor:
    """Posterior means of the whole dataset, scaled; (N, 4, 16, 16)."""
    vae.eval()
    out = [vae.encode(_to_tensor(images[i : i + 512])).latent_dist.mean for i in range(0, len(images), 512)]
    return torch.cat(out) * vae.config.scaling_factor


def _lr_lambda(cfg: PretrainConfig):
    """Linear warmup, then cosine cycles from their peak down to 0.1x; the first cycle peaks at 1, later ones at unet_restart_lr."""
    bounds = [0, *sorted(r for r in cfg.unet_restarts if 0 < r < cfg.unet_steps), cfg.unet_steps]

    def f(step: int) -> float:
        if step < cfg.unet_warmup:
            return (step + 1) / cfg.unet_warmup
        cycle = max(i for i in range(len(bounds) - 1) if bounds[i] <= step)
        start, end = bounds[cycle], bounds[cycle + 1]
        if cycle == 0:
            start = cfg.unet_warmup
        peak = 1.0 if cycle == 0 else cfg.unet_restart_lr
        p = (step - start) / max(1, end - start)
        return 0.1 + (peak - 0.1) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))  # cosine down to 0.1x

    return f


def draw_batch(latents: torch.Tensor, specs: list[dict], rng: np.random.Generator, batch: int, flip_share: float):
    """A pretraining batch: latents (B, 4, h, w), a share of them mirrored (captions say nothing about left/right), and
    one caption drawn for each; every random choice comes from `rng`, in a fixed order (resume replays it)."""
    from catlab.toyworld.world import ShapeSpec, caption_for

    idx = rng.integers(len(latents), size=batch)
    captions = [caption_for(ShapeSpec(**specs[i]), rng) for i in idx]
    flip = torch.from_numpy(rng.random(batch) < flip_share)
    z0 = latents[idx].clone()  # (B, 4, 16, 16)
    z0[flip] = z0[flip].flip(-1)
    return z0, captions


def v_prediction_loss(unet, z0: torch.Tensor, text_states: torch.Tensor, sched, min_snr_gamma: float) -> torch.Tensor:
    """The toy UNet's objective: v-prediction (Salimans & Ho 2022, arXiv 2202.00512) with min-SNR-gamma weights for
    v (Hang et al. 2023, arXiv 2303.09556), one noise draw and timestep per latent."""
    noise = torch.randn_like(z0)
    t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],))
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])  # (B,)
    pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=text_states).sample
    w = torch.clamp(snr, max=min_snr_gamma) / (snr + 1)
    return (w * F.mse_loss(pred, sched.get_velocity(z0, noise, t), reduction="none").mean(dim=(1, 2, 3))).mean()


def train_unet(cfg: PretrainConfig, latents: torch.Tensor, specs: list[dict], tokenizer, work: Path):
    """Text-to-image stage: UNet and text encoder trained jointly; EMA weights are what ships."""
    torch.manual_seed(cfg.seed + 2)
    unet, text_encoder = build.build_unet(), build.build_text_encoder(tokenizer)
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    sched = build.build_noise_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, betas=(0.9, 0.99), weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    objs = {"unet": unet, "te": text_encoder, "ema_unet": ema_unet, "ema_te": ema_te, "opt": opt, "lr": lr_sched}
    ckpt = work / "unet.ckpt"
    start = resume_stage(ckpt, objs)
    rng = np.random.default_rng(cfg.seed + 3)
    for _ in range(start):  # replay the data draws of the steps already done
        draw_batch(latents, specs, rng, cfg.unet_batch, cfg.flip_share)
    log = (work / "unet_log.jsonl").open("a")
    bar = tqdm(range(start, cfg.unet_steps), desc="unet", initial=start, total=cfg.unet_steps)
    t0 = time.time()
    for step in bar:
        z0, captions = draw_batch(latents, specs, rng, cfg.unet_batch, cfg.flip_share)  # (B, 4, 16, 16)
        loss = v_prediction_loss(unet, z0, encode_prompts(tokenizer, text_encoder, captions), sched, cfg.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_te, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 25 == 0:
            log.write(
                json.dumps(
                    {"step": step, "loss": loss.item(), "lr": lr_sched.get_last_lr()[0], "elapsed_s": time.time() - t0}
                )
                + "\n"
            )
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0:
            save_stage_checkpoint(ckpt, step + 1, objs)
    return ema_unet, ema_te


def train_oracle(cfg: PretrainConfig, work: Path) -> Oracle:
    torch.manual_seed(cfg.seed + 4)
    oracle = Oracle()
    opt = torch.optim.AdamW(oracle.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=max(2, cfg.oracle_steps)
    )  # decays to ~0: settled BN statistics
    rng, g = np.random.default_rng(cfg.seed + 5), torch.Generator().manual_seed(cfg.seed + 6)
    for _step in tqdm(range(cfg.oracle_steps), desc="oracle"):
        x, ys, yc, yk = make_oracle_batch(
            rng,
            64,
            close_miss_share=cfg.oracle_close_miss_share,
            close_miss_distance=cfg.oracle_close_miss_distance,
            solid_drift=cfg.oracle_solid_colour_drift,
        )
        out = oracle(augment(x, g))
        loss = (
            F.cross_entropy(out["shape"], ys)
            + F.cross_entropy(out["colour"], yc, ignore_index=-1)
            + F.cross_entropy(out["concept"], yk)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return oracle.eval()


def train_clip(cfg: PretrainConfig, images: np.ndarray, specs: list[dict], tokenizer, work: Path):
    """Contrastive image-text training (Radford et al. 2021, arXiv 2103.00020) on the world's captions.

    Captions repeat within a batch ("a red circle" twice), so the target is uniform over all matching
    captions rather than the diagonal alone.
    """
    from catlab.toyworld.world import ShapeSpec, caption_for

    torch.manual_seed(cfg.seed + 7)
    clip = build.build_clip(tokenizer)
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(cfg.seed + 8)
    x_all = images
    for _step in tqdm(range(cfg.clip_steps), desc="clip"):
        idx = rng.integers(len(x_all), size=cfg.clip_batch)
        caps = []
        for i in idx:
            c = ""
            while not c:
                c = caption_for(ShapeSpec(**specs[i]), rng)
            caps.append(c)
        ids = tokenize(tokenizer, caps)
        x = _to_tensor(x_all[idx])
        out = clip(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=x)
        logits = out.logits_per_image  # (B, B)
        # image i matches every caption that is true of it ("a circle" is true of every circle)
        truth = _truth_matrix(caps, [specs[i] for i in idx])  # (B, B)
        loss = _soft_contrastive(logits, truth) + _soft_contrastive(logits.t(), truth.t())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clip.eval()


def _truth_matrix(captions: list[str], specs: list[dict]) -> torch.Tensor:
    """truth[i, j] = 1 if caption j is true of image i (each attribute a caption names must match)."""
    from catlab.toyworld.world import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES

    def named(caption: str, vocab) -> str | None:
        hits = [w for w in caption.split() if w in vocab]
        return hits[0] if hits else None

    truth = torch.ones(len(specs), len(captions))
    for key, vocab in (("shape", SHAPES), ("colour", COLOUR_NAMES), ("background", BACKGROUND_NAMES)):
        said = [named(c, vocab) for c in captions]
        have = [s[key] for s in specs]
        m = torch.tensor([[w is None or w == h for w in said] for h in have], dtype=torch.float32)
        truth *= m
    return truth


def _soft_contrastive(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target spread uniformly over every true pair of the row."""
    target = truth / truth.sum(1, keepdim=True).clamp(min=1)
    return -(target * logits.log_softmax(1)).sum(1).mean()


def _vae(cfg: PretrainConfig, images, work: Path, timings: dict[str, float]):
    """The stage-1 autoencoder: trained (and timed) once, then read back from the work folder."""
    from diffusers import AutoencoderKL

    if (work / "vae_final").exists():
        return AutoencoderKL.from_pretrained(work / "vae_final")
    t = time.time()
    vae = train_vae(cfg, images, work)
    vae.save_pretrained(work / "vae_final")
    timings["vae_s"] = time.time() - t
    return vae


def pretrain(out_dir: str | Path, cfg: PretrainConfig | None = None, work_dir: str | Path | None = None) -> Path:
    """Run the whole recipe and write an asset folder (pipeline/, clip/, oracle.safetensors) to `out_dir` (work files: `<out_dir>-work`)."""
    from safetensors.torch import save_file

    cfg = cfg or PretrainConfig()
    out = Path(out_dir)
    # checkpoints and the image cache (~150 MB) live beside the asset folder, never inside it: the asset
    # folder may be catlab/assets/toyworld, which ships as package data
    work = Path(work_dir) if work_dir else out.with_name(out.name + "-work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    write_json_atomic(work / "config.json", asdict(cfg))
    tokenizer = build.build_tokenizer()
    timings: dict[str, float] = {}
    needs_world = bool({"vae", "clip", "unet"} & set(cfg.stages))  # the oracle draws its own images
    images, specs = _world_data(cfg, work) if needs_world else (None, None)

    vae = _vae(cfg, images, work, timings) if {"vae", "unet"} & set(cfg.stages) else None

    if "oracle" in cfg.stages and not (work / "oracle.safetensors").exists():
        t = time.time()
        save_file(train_oracle(cfg, work).state_dict(), work / "oracle.safetensors")
        timings["oracle_s"] = time.time() - t
    if "clip" in cfg.stages and not (work / "clip_final").exists():
        t = time.time()
        clip = train_clip(cfg, images, specs, tokenizer, work)
        clip.save_pretrained(work / "clip_final")
        timings["clip_s"] = time.time() - t
    if "unet" in cfg.stages:
        t = time.time()
        latents = encode_latents(vae, images)
        unet, te = train_unet(cfg, latents, specs, tokenizer, work)
        timings["unet_s"] = time.time() - t
        pipe = build.assemble_pipeline(unet, vae, te, tokenizer)
        pipe.save_pretrained(out / "pipeline")
        write_json_atomic(out / "pipeline" / "catlab_sampling.json", build.SAMPLING_DEFAULTS)
    measured = {}
    if "open_colours" in cfg.stages:
        t = time.time()
        measured["open_colours"] = open_colour_vae(cfg, out, work)
        timings["open_colours_s"] = time.time() - t
    write_assets(out, work, tokenizer)
    record = {"config": asdict(cfg), "timings_s": timings, **measured}
    if set(cfg.stages) != set(PretrainConfig.stages) and (out / "recipe.json").exists():
        # a partial rebuild of an existing asset folder: keep how the rest was made, and say what was redone
        previous = json.loads((out / "recipe.json").read_text())
        record = {**previous, "updates": [*previous.get("updates", []), {"stages": list(cfg.stages), **record}]}
    write_json_atomic(out / "recipe.json", record)
    return out


def write_assets(out: Path, work: Path, tokenizer) -> None:
    """Copy the oracle and CLIP (with tokenizer and image processor) from the work folder into the asset layout."""
    import shutil

    from transformers import CLIPModel

    if (work / "oracle.safetensors").exists():
        shutil.copyfile(work / "oracle.safetensors", out / "oracle.safetensors")
    if (work / "clip_final").exists():
        clip = CLIPModel.from_pretrained(work / "clip_final")
        clip.save_pretrained(out / "clip")
        tokenizer.save_pretrained(out / "clip")
        build.build_clip_image_processor().save_pretrained(out / "clip")
