"""Builders for the toy world's models: the same diffusers / transformers classes as Stable Diffusion 1.5,
only tiny. Nothing here downloads anything: the tokenizer is built from a word list.
"""

from __future__ import annotations

from catlab.toyworld.world import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, SIZE_WORDS, TRIGGER_WORDS

SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
)  # eos must not be id 2: CLIP treats eos_token_id==2 as legacy argmax pooling
EXTRA_WORDS = (  # common prompt words so DreamBench-style templates are not all <unk>
    "a",
    "an",
    "the",
    "on",
    "of",
    "in",
    "with",
    "and",
    "background",
    "photo",
    "picture",
    "image",
    "shape",
    "object",
    "thing",
    "one",
    "two",
    "many",
    "bright",
    "pale",
    "big",
    "tiny",
)
MAX_TOKENS = 12  # <bos> + the longest caption ("a small blue star on a dark background" = 8 words) + <eos>, with room
TEXT_HIDDEN = 64


def vocabulary() -> list[str]:
    """All words the toy tokenizer knows; trigger words are present but never used in pretraining."""
    words = list(SPECIAL_TOKENS)
    for w in (*EXTRA_WORDS, *SHAPES, *COLOUR_NAMES, *BACKGROUND_NAMES, *SIZE_WORDS, *TRIGGER_WORDS):
        if w not in words:
            words.append(w)
    return words


def build_tokenizer():
    """A word-level tokenizer wrapped as a transformers fast tokenizer (saved/loaded like CLIP's)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TOKENS,
    )


def build_text_encoder(tokenizer):
    """CLIPTextModel, 69k parameters (SD 1.5 uses the same class at 123M)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(_text_config(tokenizer, CLIPTextConfig))


def _text_config(tokenizer, cls):
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_HIDDEN,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_vae():
    """AutoencoderKL with 4 latent channels like SD, downsampling 32 px -> 16 x 16 latents (SD: 8x)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,  # self-attention over 256 latent pixels buys nothing for flat shapes
    )


def build_unet():
    """UNet2DConditionModel on 16x16x4 latents; cross-attention at 8x8 and 4x4, so the caption reaches more than one
    resolution and an attention-only LoRA can draw a concept (toy world v2, docs/toyworld.md); none at 16x16, where
    CPU attention would dominate a step.

    `addition_embed_type="text"` adds an attention-pooled prompt embedding to the time embedding so every
    ResBlock sees the prompt (as in Imagen / DeepFloyd IF); a tiny UNet binds colour to shape far better with it.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        norm_num_groups=16,  # small enough to pretrain on a CPU
        # diffusers reads `attention_head_dim` as heads per block (a naming slip kept for SD 1.x configs): (1, 2, 4)
        # gives 32 channels per head; narrower heads cost CPU time for nothing (docs/toyworld.md, "Toy world v2.2")
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(1, 2, 4),
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",  # cosine schedule (Nichol & Dhariwal 2021, arXiv 2102.09672): better at low res
    prediction_type="v_prediction",  # v = alpha*eps - sigma*x0 (Salimans & Ho 2022, arXiv 2202.00512)
    clip_sample=False,
    timestep_spacing="trailing",  # reaches t=T at sampling (Lin et al. 2023, arXiv 2305.08891)
    set_alpha_to_one=False,
    steps_offset=1,
)


# Sampler defaults written beside model_index.json (catlab_sampling.json). A tiny model oversaturates under
# SD's guidance 7.5: colours mix and shapes distort; low guidance follows prompts best (benchmarks/toyworld_quality.py).
SAMPLING_DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 3.0}


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_noise_scheduler():
    """The training scheduler (same betas as the sampler)."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "timestep_spacing")}
    return DDPMScheduler(**cfg)


def assemble_pipeline(unet, vae, text_encoder, tokenizer, scheduler=None):
    """A genuine StableDiffusionPipeline from tiny parts (no safety checker: nothing to check in shapes)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_clip(tokenizer):
    """A transformers CLIPModel for 32 px images with the toy tokenizer (SD-era metrics use ViT-B/32)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = _text_config(tokenizer, CLIPTextConfig)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=4,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,  # 64 patches: star vs triangle needs 4 px detail
        num_attention_heads=4,
        projection_dim=TEXT_HIDDEN,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TEXT_HIDDEN)
    return CLIPModel(config)


def build_clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
