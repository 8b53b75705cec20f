"""The two conversions every part of catlab needs: pixels <-> the [-1, 1] tensors the VAE and the oracle take, and
captions -> token ids -> text-encoder states (padded to the tokenizer's length, as Stable Diffusion was trained)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pixels_to_unit_range(pixels) -> torch.Tensor:
    """uint8-valued pixels (..., H, W, 3), as an array or a tensor -> float32 (..., 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(pixels)).float()  # (..., H, W, 3)
    return x.movedim(-1, -3) / 127.5 - 1.0  # (..., 3, H, W)


def unit_range_to_pixels(x: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor in [-1, 1] -> uint8 (H, W, 3), clipped."""
    return ((x.detach().float().cpu().permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def tokenize(tokenizer, texts: Sequence[str]):
    """Token ids (and attention mask) padded and truncated to the tokenizer's length: (B, L)."""
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def encode_prompts(tokenizer, text_encoder, texts: Sequence[str], device=None) -> torch.Tensor:
    """The text encoder's last hidden states for `texts`: (B, L, D). Gradients flow when the encoder trains."""
    ids = tokenize(tokenizer, texts).input_ids
    return text_encoder(ids.to(device if device is not None else text_encoder.device))[0]
