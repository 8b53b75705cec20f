"""Several LoRA adapters as one adapter file, combined by peft's `add_weighted_adapter`.

Two ways people put separately trained concepts into one model:

- "sum": both adapters on at once, each at its weight; what `set_active_adapters(pipe, [a, b], [1, 1])` does at
  sampling time. Written as one adapter it is peft's "cat" combination (the low-rank factors side by side, rank
  r_a + r_b), the same function of the input up to float rounding (tests/test_multi_concept.py checks it).
- "linear": peft's weighted combination of the factors themselves (A = sum of sqrt(w) A_i, B = sum of sqrt(w) B_i,
  rank unchanged). Its product has cross terms B_a A_b that neither adapter learnt: what a merged file shared on a
  hub often is (Ilharco et al. 2023, "Editing models with task arithmetic", arXiv 2212.04089, on adding task
  vectors).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

COMBINATIONS = {"sum": "cat", "linear": "linear"}  # catlab's name -> peft's combination_type
COMBINED = "combined"  # the adapter name inside the combined file's pipeline


def combine_adapters(
    adapters: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    how: str = "sum",
    base: object = "toyworld",
    overwrite: bool = False,
) -> Path:
    """Write one adapter folder (as `save_lora` does) that combines `adapters`, each at its weight (default 1).
    `how` is a key of COMBINATIONS; `base` the base model they were trained on (a name, folder or pipeline)."""
    from catlab.models.base import load_base
    from catlab.models.lora import load_lora, save_lora
    from catlab.models.trigger_embedding import TRIGGER_EMBEDDING_NAME

    paths = [Path(a) for a in adapters]
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    _check_arguments(paths, weights, how, TRIGGER_EMBEDDING_NAME)
    pipe = load_base(base) if isinstance(base, (str, Path)) else base
    fresh = {"unet": copy.deepcopy(pipe.unet), "text_encoder": copy.deepcopy(pipe.text_encoder)}
    names = [f"source{i}" for i in range(len(paths))]
    for name, path in zip(names, paths):
        load_lora(pipe, path, name)  # catlab's checks: the file exists and fits this base model
    combined = SimpleNamespace(tokenizer=pipe.tokenizer)
    for part, model in fresh.items():
        sources = [(n, w) for n, w in zip(names, weights) if n in getattr(getattr(pipe, part), "peft_config", {})]
        if sources:
            _combine_into(model, getattr(pipe, part), sources, COMBINATIONS[how])
        setattr(combined, part, model)
    for name in names:
        pipe.delete_adapters([name])  # a pipeline passed in is left as it came
    sources = [str(p) for p in paths]
    metadata = {"combined_from": sources, "combination_weights": weights, "combination": how}
    return save_lora(combined, out_dir, adapter_name=COMBINED, metadata=metadata, overwrite=overwrite).parent


def _check_arguments(paths: list[Path], weights: list[float], how: str, trigger_file: str) -> None:
    if how not in COMBINATIONS:
        raise ValueError(f"combine_adapters: how={how!r}; choose one of {sorted(COMBINATIONS)}")
    if len(paths) < 2:
        raise ValueError(f"combine_adapters: pass two or more adapters, got {len(paths)}")
    if len(weights) != len(paths):
        raise ValueError(f"combine_adapters: {len(weights)} weights for {len(paths)} adapters; pass one per adapter")
    for p in paths:
        if (p if p.is_dir() else p.parent).joinpath(trigger_file).is_file():
            raise ValueError(
                f"combine_adapters: {p} carries trained trigger vectors ({trigger_file}), which a combined file does "
                "not hold; load the adapters side by side instead: set_active_adapters(pipe, [a, b], [1, 1])"
            )


def _combine_into(fresh_model, loaded_model, sources: list[tuple[str, float]], combination_type: str) -> None:
    """Inject each source adapter of `loaded_model` into `fresh_model` (a copy of the base part) through peft's
    LoraModel and add their combination under COMBINED."""
    from peft.tuners.lora import LoraModel
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    configs = {n: copy.deepcopy(loaded_model.peft_config[n]) for n, _ in sources}
    if combination_type == "linear" and len({c.r for c in configs.values()}) > 1:
        raise ValueError(
            f"combine_adapters: how='linear' needs adapters of one rank, got ranks {[c.r for c in configs.values()]}; "
            "use how='sum'"
        )
    first = sources[0][0]
    wrapper = LoraModel(fresh_model, {first: configs[first]}, first)
    for name, _ in sources[1:]:
        wrapper.peft_config[name] = configs[name]
        wrapper.inject_adapter(fresh_model, name)
    with warnings.catch_warnings():  # loading one adapter's weights names every other adapter's as "missing"
        warnings.simplefilter("ignore")
        for name, _ in sources:
            state = get_peft_model_state_dict(loaded_model, adapter_name=name)
            unexpected = set_peft_model_state_dict(fresh_model, state, adapter_name=name).unexpected_keys
            if unexpected:
                raise ValueError(f"combine_adapters: {len(unexpected)} weights of {name} found no layer")
    wrapper.add_weighted_adapter(
        [n for n, _ in sources], [w for _, w in sources], COMBINED, combination_type=combination_type
    )
    wrapper.set_adapter(COMBINED)
    for name, _ in sources:
        wrapper.delete_adapter(name)
