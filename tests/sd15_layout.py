"""A pipeline with Stable Diffusion 1.5's real layout and random weights, built offline from SD 1.5's own configs.

UNet, VAE and scheduler are configured as `stable-diffusion-v1-5/stable-diffusion-v1-5` ships them; the text encoder
is CLIP ViT-L/14's text tower (768 wide, 12 layers, 77 positions) over the toy world's word-level tokenizer (the
only difference: its vocabulary, so nothing is downloaded). About 1.03 billion parameters, 3.9 GB in fp32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# unet/config.json of SD 1.5 (the defaults of diffusers that it relies on are spelled out)
UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
# vae/config.json of SD 1.5
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
)
# text_encoder/config.json of SD 1.5 (CLIP ViT-L/14's text model), less its 49,408-token vocabulary
TEXT_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# scheduler/scheduler_config.json of SD 1.5: PNDM, epsilon prediction, scaled-linear betas
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)
TOKENS = 77
# SD 1.5's transformer blocks: 2 per CrossAttnDownBlock2D (x3), 1 in the mid block, 3 per CrossAttnUpBlock2D (x3)
TRANSFORMER_BLOCKS = 3 * 2 + 1 + 3 * 3


def _random_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give a model built on the meta device random weights at PyTorch's default scale: U(-1, 1) / sqrt(fan_in) for
    convolutions and linear layers, ones and zeros for norms. Slices of one random pool, copied: PyTorch's own init
    draws every value (about 12 ns each on a CPU, 11 s for SD 1.5's UNet), which a smoke test need not wait for."""
    from accelerate.utils import set_module_tensor_to_device

    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(1 << 25, generator=g) * 2 - 1  # larger than the largest tensor (2560 -> 1280, 3x3: 29.5M)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                value = torch.ones(p.shape) if name == "weight" else torch.zeros(p.shape)
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = math.prod(module.weight.shape[1:])
                start = int(torch.randint(0, pool.numel() - p.numel() + 1, (1,), generator=g))
                value = torch.mul(
                    pool[start : start + p.numel()].view(p.shape), 1 / math.sqrt(fan_in), out=torch.empty(p.shape)
                )
            else:
                raise TypeError(f"no random init for parameter {name} of {type(module).__name__}")
            set_module_tensor_to_device(module, name, "cpu", value=value)  # its own storage: none shared with the pool
    return model


def build_sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD 1.5's layout and random weights (fp32, no safety checker)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from catlab.toyworld import build

    tok = build.build_tokenizer()
    tok.model_max_length = TOKENS
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers real
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    _random_weights(unet, seed)
    _random_weights(vae, seed + 1)
    torch.manual_seed(seed)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **TEXT_CONFIG,
        )
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_sd15_pipeline(folder: str | Path, seed: int = 0, sampling: dict | None = None) -> Path:
    """Build the pipeline and `save_pretrained` it into `folder` (fp32); `sampling` goes to catlab_sampling.json."""
    from catlab.models import SAMPLING_FILE

    folder = Path(folder)
    pipe = build_sd15_pipeline(seed)
    pipe.save_pretrained(folder)
    if sampling:
        (folder / SAMPLING_FILE).write_text(json.dumps(sampling) + "\n")
    return folder
