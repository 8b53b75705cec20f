"""Stable Diffusion 1.5's layout at a few thousandth of its width, and its weights as one original-format checkpoint.

`build_tiny_sd15_pipeline` keeps every block, layer and attention of SD 1.5 (tests/sd15_layout.py) with 32-64
channels, 64 px images and a 2-layer text encoder: built and sampled in a second on a CPU. `single_file_checkpoint`
writes its weights with the key names of the original (CompVis / webui) single .safetensors checkpoints that civitai
shares, the inverse of what diffusers' `from_single_file` converts, so single-file loading is tested offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from sd15_layout import SCHEDULER_CONFIG, TEXT_CONFIG, TOKENS, UNET_CONFIG, VAE_CONFIG

TINY_WIDTHS = (32, 32, 64, 64)  # SD 1.5: 320, 640, 1280, 1280 (UNet) and 128, 256, 512, 512 (VAE)
TINY_UNET = {**UNET_CONFIG, "block_out_channels": TINY_WIDTHS, "cross_attention_dim": 32, "sample_size": 8}
TINY_VAE = {**VAE_CONFIG, "block_out_channels": TINY_WIDTHS, "sample_size": 64}
TINY_TEXT = {
    **TEXT_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}


def build_tiny_sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD 1.5's layout, tiny widths and random weights (fp32, no safety checker)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from catlab.toyworld import build

    torch.manual_seed(seed)
    tok = build.build_tokenizer()
    tok.model_max_length = TOKENS
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **TINY_TEXT,
        )
    )
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=te,
        tokenizer=tok,
        unet=UNet2DConditionModel(**TINY_UNET),
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _unet_prefixes(config) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for the UNet: input_blocks count resnets and downsamplers in order."""
    per = config["layers_per_block"] + 1  # original blocks per level: the resnets (+ attention) and one resampler
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(per - 1):
            pairs += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."),
            ]
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
        for j in range(per):
            pairs += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."),
            ]
        after = 2 if "CrossAttn" in up_type else 1  # the upsampler follows the resnet and, if any, the attention
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per * i + per - 1}.{after}."))
    return pairs


UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _vae_prefixes(config) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for the VAE: the original numbers the decoder's levels bottom-up."""
    n = len(config["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(n):
        pairs += [
            (f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
            (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."),
        ]
    return pairs


def _rename(key: str, prefixes: list[tuple[str, str]], inner: list[tuple[str, str]], inner_marker: str) -> str:
    """`key` with its longest matching prefix replaced, and the inner names replaced inside `inner_marker` modules."""
    hits = [(new, old) for old, new in prefixes if key.startswith(old)]
    if not hits:
        return key
    new, old = max(hits, key=lambda h: len(h[1]))
    rest = key[len(old) :]
    if inner_marker in old:
        for ours, theirs in inner:  # whole dotted names only: "conv1" is not the start of "conv1x"
            rest = re.sub(rf"(^|\.){re.escape(ours)}\.", rf"\g<1>{theirs}.", rest, count=1)
    return new + rest


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(unet.config)
    return {
        "model.diffusion_model." + _rename(k, prefixes, UNET_RESNET, "resnets"): v for k, v in unet.state_dict().items()
    }


def vae_to_original(vae, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """The VAE's weights as the original names them; attention projections as 1x1 convolutions, as it stores them."""
    out = {}
    for k, v in vae.state_dict().items():
        name = _rename(k, _vae_prefixes(vae.config), [("conv_shortcut", "nin_shortcut")], "resnets")
        if ".mid.attn_1." in name:
            head, _, tail = name.rpartition(".mid.attn_1.")
            for ours, theirs in VAE_ATTENTION:
                if tail.startswith(ours + "."):
                    tail = theirs + tail[len(ours) :]
            name = f"{head}.mid.attn_1.{tail}"
            v = v.reshape(*v.shape, 1, 1) if v.ndim == 2 else v
        out[prefix + name] = v
    return out


def text_encoder_to_original(te) -> dict[str, torch.Tensor]:
    return {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in te.state_dict().items()
        if not k.endswith("position_ids")
    }


def single_file_checkpoint(pipe, path: Path) -> Path:
    """Write `pipe`'s UNet, VAE and text encoder as one original-format .safetensors checkpoint."""
    from safetensors.torch import save_file

    weights = {
        **unet_to_original(pipe.unet),
        **vae_to_original(pipe.vae),
        **text_encoder_to_original(pipe.text_encoder),
    }
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    return path


def config_only_folder(pipe, folder: Path) -> Path:
    """`pipe` saved as a diffusers folder, then stripped of its weights: only the configs that describe the layout."""
    pipe.save_pretrained(folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder
