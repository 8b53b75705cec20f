"""Models: base pipelines (`base`: the toy world or any diffusers Stable Diffusion checkpoint) and the LoRA adapters
trained on them (`lora`). Both are re-exported here: `from catlab.models import load_base, load_lora`.
"""

from catlab.models.base import (
                                SAMPLING_FILE,
                                SD_DEFAULTS,
                                configured_resolution,
                                enable_vae_slicing,
                                load_base,
                                load_for_sampling,
                                load_vae,
                                native_resolution,
                                resolve_base,
                                sampling_defaults,
                                sampling_defaults_for,
                                sampling_device,
                                sampling_dtype,
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

__all__ = ["SAMPLING_FILE", "SD_DEFAULTS", "configured_resolution", "enable_vae_slicing", "load_base", "load_for_sampling",
           "load_vae", "native_resolution", "resolve_base", "sampling_defaults", "sampling_defaults_for", "sampling_device",
           "sampling_dtype", "DEFAULT_TARGETS", "LORA_WEIGHT_NAME", "WEBUI_WEIGHT_NAME",
           "AdapterMismatchError", "adapter_metadata", "adapters_disabled", "add_lora", "load_lora", "lora_parameters",
           "save_lora", "set_active_adapters", "webui_state_dict"]
