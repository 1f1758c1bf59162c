"""PEFT LoRA adapters as fine-tunes: a LoRA adapter on θ_A stands for θ_A^ft.

Its merged delta (scaling·B·A per adapted module, rsLoRA and ``fan_in_fan_out`` included; ``modules_to_save``
tensors replacing θ_A's) is added to θ_A's tensors one tensor at a time (:mod:`.reader`), so the plan, the
votes, the streaming merge and the multi-task / multi-source merges see an ordinary fine-tune. :mod:`.binding`
binds an adapter to the model it is applied to and gives the config it stands for; :mod:`.targets` tells which
modules LoRA can adapt. Recognising and vetting an adapter folder is part of resolving a model
(:mod:`gradfix_hf.hub.adapters`); writing the result as an adapter for θ_B is a stage-2 output
(:mod:`gradfix_hf.merge.lora_export`). See docs/lora.md.
"""
from .binding import adapter_model_config, bind_base, bound_base
from .reader import LoraAdapterReader
from .targets import CONV1D, EMBEDDING, LINEAR, kind_of, module_kinds, same_module

__all__ = ["LoraAdapterReader", "adapter_model_config", "bind_base", "bound_base", "module_kinds", "kind_of",
           "same_module", "LINEAR", "CONV1D", "EMBEDDING"]
