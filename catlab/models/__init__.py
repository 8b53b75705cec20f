"""Models: base pipelines (`base`: the toy world or any diffusers Stable Diffusion checkpoint) and the LoRA adapters
trained on them (`lora`). Both are re-exported here: `from catlab.models import load_base, load_lora`.
"""

from catlab.models.base import (
                                SAMPLING_FILE,
                                SD_DEFAULTS,
                                configured_resolution,
                                load_base,
                                native_resolution,
                                resolve_base,
                                sampling_defaults,
                                sampling_defaults_for,
)
from catlab.models.lora import (
                                DEFAULT_TARGETS,
                                LORA_WEIGHT_NAME,
                                WEBUI_WEIGHT_NAME,
                                AdapterMismatchError,
                                adapter_metadata,
                                adapters_disabled,
                                add_lora,
                                load_lora,
                                lora_parameters,
                                save_lora,
                                set_active_adapters,
                                webui_state_dict,
)

__all__ = ["SAMPLING_FILE", "SD_DEFAULTS", "configured_resolution", "load_base", "native_resolution", "resolve_base",
           "sampling_defaults", "sampling_defaults_for", "DEFAULT_TARGETS", "LORA_WEIGHT_NAME", "WEBUI_WEIGHT_NAME",
           "AdapterMismatchError", "adapter_metadata", "adapters_disabled", "add_lora", "load_lora", "lora_parameters",
           "save_lora", "set_active_adapters", "webui_state_dict"]
