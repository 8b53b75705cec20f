"""Pivotal tuning: the trigger's own embedding trains beside the LoRA, is saved and loaded with it, resumes exactly,
and switching the adapter off still gives the exact base model."""

from __future__ import annotations

import json

import pytest
import torch
from lora_helpers import tiny_run_config
from safetensors.torch import load_file

from catlab.config import ConceptConfig, TrainConfig
from catlab.models import adapters_disabled, load_base, load_lora, set_active_adapters
from catlab.models.trigger_embedding import (
    TRIGGER_EMBEDDING_NAME,
    initial_trigger_vectors,
    trigger_embedding_of,
    trigger_token_ids,
    wrap_token_embedding,
)
from catlab.tensors import encode_prompts
from catlab.training.callbacks import TrainCallback
from catlab.training.loop import train


def _states(pipe, caption: str) -> torch.Tensor:
    with torch.no_grad():
        return encode_prompts(pipe.tokenizer, pipe.text_encoder, [caption], "cpu")[0]  # (L, D)


def test_trigger_vectors_change_only_the_trigger_and_switch_off(toyworld_env):
    pipe = load_base("toyworld")
    base_trigger, base_class = _states(pipe, "a sks circle"), _states(pipe, "a circle")
    emb = wrap_token_embedding(pipe.text_encoder)
    vectors = emb.add("default", trigger_token_ids(pipe.tokenizer, ["sks"]))  # (1, D) from the base row
    assert torch.equal(_states(pipe, "a sks circle"), base_trigger), "initialised from the base row: no change yet"
    with torch.no_grad():
        vectors += 1.0
    assert not torch.allclose(_states(pipe, "a sks circle"), base_trigger)
    assert torch.equal(_states(pipe, "a circle"), base_class), "captions without the trigger are untouched"
    with adapters_disabled(pipe.text_encoder):
        assert torch.equal(_states(pipe, "a sks circle"), base_trigger), "adapter off = the exact base model"
    assert not torch.allclose(_states(pipe, "a sks circle"), base_trigger), "and on again after the block"
    set_active_adapters(pipe, None)
    assert torch.equal(_states(pipe, "a sks circle"), base_trigger)


def test_a_trigger_the_tokenizer_cannot_spell_is_refused(toyworld_env):
    pipe = load_base("toyworld")
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary.*trigger_embedding_lr: 0"):
        trigger_token_ids(pipe.tokenizer, ["qqqzz"])


def test_pivotal_tuning_trains_saves_and_loads_the_trigger(toyworld_env, concept_dir, tmp_path):
    cfg = tiny_run_config(
        concept_dir, tmp_path / "run", steps=3, checkpoint_every=0, regime="cat", trigger_embedding_lr=0.05
    )
    result = train(cfg)
    saved = load_file(result.adapter_dir / TRIGGER_EMBEDDING_NAME)
    fresh = load_base("toyworld")
    (sks,) = trigger_token_ids(fresh.tokenizer, ["sks"])
    assert list(saved) == fresh.tokenizer.convert_ids_to_tokens([sks])
    base_row = fresh.text_encoder.get_input_embeddings().weight[sks].detach().clone()
    assert float((saved["sks"] - base_row).norm()) > 1e-3, "the trigger's embedding moved"
    base_trigger, base_class = _states(fresh, "a sks circle"), _states(fresh, "a circle")
    load_lora(fresh, result.adapter_dir, "pet")
    assert torch.equal(trigger_embedding_of(fresh.text_encoder).vectors["pet"][0], saved["sks"])
    assert not torch.allclose(_states(fresh, "a sks circle"), base_trigger)
    assert torch.equal(_states(fresh, "a circle"), base_class)
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[sks], base_row), "the base table is untouched"
    set_active_adapters(fresh, None)
    assert torch.equal(_states(fresh, "a sks circle"), base_trigger), "adapter off: the base model's trigger"


class _Interrupt(TrainCallback):
    def on_step(self, step, logs):
        if step == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt


@pytest.mark.parametrize("first", [0.0, 0.5])
def test_resume_with_a_training_trigger_is_exact(toyworld_env, concept_dir, tmp_path, first):
    kw = dict(steps=4, checkpoint_every=2, regime="lora", trigger_embedding_lr=0.05, trigger_embedding_first=first)
    full = train(tiny_run_config(concept_dir, tmp_path / "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run_config(concept_dir, tmp_path / "cut", **kw), callbacks=[_Interrupt()])
    resumed = train(tiny_run_config(concept_dir, tmp_path / "cut", **kw), resume=True)
    for name in ("pytorch_lora_weights.safetensors", TRIGGER_EMBEDDING_NAME):
        a, b = load_file(full.adapter_dir / name), load_file(resumed.adapter_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_the_trigger_can_start_from_a_known_word(toyworld_env):
    pipe = load_base("toyworld")
    table = pipe.text_encoder.get_input_embeddings().weight
    concepts = [ConceptConfig("unused", "sks", "circle")]
    (sks,) = trigger_token_ids(pipe.tokenizer, ["sks"])
    (circle,) = pipe.tokenizer("circle", add_special_tokens=False).input_ids
    (red,) = pipe.tokenizer("red", add_special_tokens=False).input_ids
    ids, own = initial_trigger_vectors(pipe.tokenizer, table, concepts)
    assert ids == [sks] and torch.equal(own[0], table[sks])
    assert torch.equal(initial_trigger_vectors(pipe.tokenizer, table, concepts, "{class}")[1][0], table[circle])
    assert torch.equal(initial_trigger_vectors(pipe.tokenizer, table, concepts, "red")[1][0], table[red])
    with pytest.raises(
        ValueError, match="'qqqzz' is not in the tokenizer's vocabulary.*trigger_embedding_init='qqqzz'"
    ):
        initial_trigger_vectors(pipe.tokenizer, table, concepts, "qqqzz")


def test_a_start_word_without_a_rate_is_refused(concept_dir):
    with pytest.raises(ValueError, match="trigger_embedding_init='.class.' needs trigger_embedding_lr > 0"):
        TrainConfig(concepts=[ConceptConfig(str(concept_dir), "sks", "circle")], trigger_embedding_init="{class}")


def test_training_starts_the_trigger_at_the_class_word(toyworld_env, concept_dir, tmp_path):
    cfg = tiny_run_config(
        concept_dir,
        tmp_path / "run",
        steps=2,
        checkpoint_every=0,
        regime="lora",
        trigger_embedding_lr=1e-4,
        trigger_embedding_init="{class}",
    )
    result = train(cfg)
    saved = load_file(result.adapter_dir / TRIGGER_EMBEDDING_NAME)["sks"]
    table = load_base("toyworld").text_encoder.get_input_embeddings().weight.detach()
    (sks,) = trigger_token_ids(load_base("toyworld").tokenizer, ["sks"])
    (circle,) = load_base("toyworld").tokenizer("circle", add_special_tokens=False).input_ids
    assert float((saved - table[circle]).abs().max()) < 1e-3, "two small steps from the class word's row"
    assert float((saved - table[sks]).norm()) > 0.1, "not from the trigger's own row"
    recorded = json.loads((result.adapter_dir / "catlab_adapter.json").read_text())
    assert recorded["trigger_embedding_init"] == "{class}"


def _lora_b_norm(adapter_dir) -> float:
    weights = load_file(adapter_dir / "pytorch_lora_weights.safetensors")
    return sum(float(w.norm()) for k, w in weights.items() if "lora_B" in k)


def test_the_embedding_first_phase_holds_the_lora_still(toyworld_env, concept_dir, tmp_path):
    kw = dict(steps=4, checkpoint_every=0, regime="cat", trigger_embedding_lr=0.05)
    only_embedding = train(tiny_run_config(concept_dir, tmp_path / "a", trigger_embedding_first=0.9, **kw))
    assert _lora_b_norm(only_embedding.adapter_dir) == 0.0, "4 updates x 0.9 = 4 in the first phase: LoRA as it began"
    vectors = load_file(only_embedding.adapter_dir / TRIGGER_EMBEDDING_NAME)["sks"]
    (sks,) = trigger_token_ids(load_base("toyworld").tokenizer, ["sks"])
    start = load_base("toyworld").text_encoder.get_input_embeddings().weight[sks].detach()
    assert float((vectors - start).norm()) > 1e-3, "while the trigger's embedding trains"
    halves = train(tiny_run_config(concept_dir, tmp_path / "b", trigger_embedding_first=0.5, **kw))
    assert _lora_b_norm(halves.adapter_dir) > 0.0, "the LoRA trains in the second phase"
    recorded = json.loads((halves.adapter_dir / "catlab_adapter.json").read_text())
    assert recorded["trigger_embedding_first"] == 0.5


def test_an_embedding_phase_without_a_rate_is_refused(concept_dir):
    concepts = [ConceptConfig(str(concept_dir), "sks", "circle")]
    with pytest.raises(ValueError, match="trigger_embedding_first=0.5 needs trigger_embedding_lr > 0"):
        TrainConfig(concepts=concepts, trigger_embedding_first=0.5)
    with pytest.raises(ValueError, match="trigger_embedding_first=1.0: must be at least 0 and below 1"):
        TrainConfig(concepts=concepts, trigger_embedding_lr=1e-3, trigger_embedding_first=1.0)
