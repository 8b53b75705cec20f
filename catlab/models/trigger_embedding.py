"""The trigger word's own token embedding, trained beside the LoRA: pivotal tuning.

Textual inversion (Gal et al. 2022, arXiv 2208.01618) learns a word's input embedding; pivotal tuning trains it
together with a LoRA (cloneofsimo/lora; diffusers' advanced DreamBooth LoRA script, `--train_text_encoder_ti`), so
that the concept has a place of its own in the caption instead of living only in how the UNet reads the class word.

The base embedding table is never written to: a `TriggerEmbedding` wraps the text encoder's token embedding and
replaces the rows of the trigger's tokens by each active adapter's vectors. Switching the adapters off
(`adapters_disabled`, `set_active_adapters(pipe, None)`) switches these off too, so "adapter off" is still the exact
base model, and several adapters can each bring their own trigger.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

TRIGGER_EMBEDDING_NAME = "trigger_embeddings.safetensors"  # beside pytorch_lora_weights.safetensors


class TriggerEmbedding(nn.Module):
    """A token embedding whose trigger rows come from the active adapters' vectors."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        self.base = base
        self.vectors = nn.ParameterDict()  # adapter name -> (T, D) vectors of its trigger tokens
        self.token_ids: dict[str, list[int]] = {}
        self.active: list[str] = []

    @property
    def weight(self) -> torch.Tensor:
        """The base table: what code that reads `get_input_embeddings().weight` (dtype, size) expects."""
        return self.base.weight

    def add(self, name: str, token_ids: list[int], vectors: torch.Tensor | None = None) -> nn.Parameter:
        """Vectors for adapter `name`'s trigger tokens (initialised from the base rows), made active."""
        init = self.base.weight[token_ids].detach() if vectors is None else vectors
        self.vectors[name] = nn.Parameter(init.detach().clone().to(self.base.weight.device, torch.float32))
        self.token_ids[name] = list(token_ids)
        if name not in self.active:
            self.active.append(name)
        return self.vectors[name]

    def remove(self, name: str) -> None:
        if name in self.vectors:
            del self.vectors[name]
        self.token_ids.pop(name, None)
        self.active = [n for n in self.active if n != name]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)  # (B, L, D)
        for name in self.active:
            ids = torch.tensor(self.token_ids[name], device=input_ids.device)
            match = (input_ids[..., None] == ids).to(torch.float32)  # (B, L, T)
            # always through the vectors, even when no row matches: every process's graph uses them (DDP)
            picked = match @ self.vectors[name]  # (B, L, D)
            out = torch.where(match.sum(-1, keepdim=True) > 0, picked.to(out.dtype), out)
        return out


def trigger_embedding_of(text_encoder) -> TriggerEmbedding | None:
    emb = text_encoder.get_input_embeddings()
    return emb if isinstance(emb, TriggerEmbedding) else None


def wrap_token_embedding(text_encoder) -> TriggerEmbedding:
    """The text encoder's TriggerEmbedding, installed once (later calls return the same one)."""
    emb = trigger_embedding_of(text_encoder)
    if emb is None:
        emb = TriggerEmbedding(text_encoder.get_input_embeddings())
        text_encoder.set_input_embeddings(emb)
    return emb


def known_token_ids(tokenizer, word: str, fix: str) -> list[int]:
    """The token ids that spell `word`; a ValueError ending in `fix` when the tokenizer does not know it."""
    got = tokenizer(word, add_special_tokens=False).input_ids
    if not got or tokenizer.unk_token_id in got:
        raise ValueError(f"{word!r} is not in the tokenizer's vocabulary (tokens {got}): {fix}")
    return got


def trigger_token_ids(tokenizer, triggers: Iterable[str]) -> list[int]:
    """The token ids of the trigger words (each word once); an error names a trigger the tokenizer cannot spell."""
    ids: list[int] = []
    for word in dict.fromkeys(triggers):
        fix = (
            "it has no embedding to train; choose a trigger it spells with known tokens, or set trigger_embedding_lr: 0"
        )
        ids += [i for i in known_token_ids(tokenizer, word, fix) if i not in ids]
    return ids


def initial_trigger_vectors(tokenizer, table: torch.Tensor, concepts, init: str = "") -> tuple[list[int], torch.Tensor]:
    """(the trigger tokens' ids, their starting vectors (T, D)) for `concepts` (each with .trigger and .class_word).

    `init` "" starts each trigger token from its own row; "{class}" from its concept's class word's row (the mean of
    the word's rows when the tokenizer splits it); any other word from that word's row: textual inversion's
    initializer token (Gal et al. 2022, arXiv 2208.01618)."""
    ids = trigger_token_ids(tokenizer, [c.trigger for c in concepts])
    rows = {i: table[i] for i in ids}
    fix = f'trigger_embedding_init={init!r}: choose a word it knows, "{{class}}" for the class word, or ""'
    for c in concepts if init else ():
        start = table[known_token_ids(tokenizer, c.class_word if init == "{class}" else init, fix)].mean(0)  # (D,)
        for i in trigger_token_ids(tokenizer, [c.trigger]):
            rows[i] = start
    return ids, torch.stack([rows[i] for i in ids]).detach()  # (T, D)


def set_active_trigger_embeddings(text_encoder, names: Iterable[str] | None) -> None:
    """Use the trigger vectors of adapters `names` (None: none, the base embedding)."""
    emb = trigger_embedding_of(text_encoder)
    if emb is not None:
        emb.active = [n for n in (names or []) if n in emb.vectors]


def save_trigger_embedding(text_encoder, tokenizer, out_dir: Path, adapter_name: str = "default") -> Path | None:
    """Write adapter `adapter_name`'s trigger vectors as {token: (D,) vector} to out_dir (nothing without them)."""
    from safetensors.torch import save_file

    emb = trigger_embedding_of(text_encoder)
    if emb is None or adapter_name not in emb.vectors:
        return None
    tokens = tokenizer.convert_ids_to_tokens(emb.token_ids[adapter_name])
    vectors = emb.vectors[adapter_name].detach().float().cpu()  # (T, D)
    path = Path(out_dir) / TRIGGER_EMBEDDING_NAME
    save_file({tok: vectors[k].contiguous() for k, tok in enumerate(tokens)}, path, metadata={"format": "pt"})
    return path


def load_trigger_embedding(text_encoder, tokenizer, path: Path, adapter_name: str = "default") -> None:
    """Read a trigger_embeddings.safetensors into the text encoder as adapter `adapter_name`'s vectors."""
    from safetensors.torch import load_file

    vectors = load_file(str(path))
    ids = tokenizer.convert_tokens_to_ids(list(vectors))
    emb = wrap_token_embedding(text_encoder)
    unknown = [tok for tok, i in zip(vectors, ids) if i is None or i == tokenizer.unk_token_id]
    width = emb.base.weight.shape[1]
    if unknown or any(v.shape != (width,) for v in vectors.values()):
        raise ValueError(
            f"{path} does not fit this text encoder: tokens {unknown} are not in its vocabulary, or the vectors are "
            f"not {width} wide; was the adapter trained on another base model?"
        )
    emb.add(adapter_name, ids, torch.stack(list(vectors.values())))
