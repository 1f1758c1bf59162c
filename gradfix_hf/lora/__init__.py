"""PEFT LoRA adapters in and out of GradFix.

* In (:mod:`.adapter_files`, :mod:`.adapter_reader`): a LoRA adapter on θ_A stands for θ_A^ft. Its merged delta
  (scaling·B·A per adapted module, rsLoRA and ``fan_in_fan_out`` included; ``modules_to_save`` tensors replacing
  θ_A's) is added to θ_A's tensors one tensor at a time, so the plan, the votes, the streaming merge and the
  multi-task / multi-source merges see an ordinary fine-tune.
* Out (:mod:`.export`): the transported result written as a LoRA adapter for θ_B by truncated SVD of each
  masked delta (``output.as_lora``), loadable with ``PeftModel.from_pretrained(θ_B, folder)``.

See docs/lora.md.
"""
from .adapter_files import ADAPTER_CONFIG, AdapterInfo, is_adapter_folder

__all__ = ["ADAPTER_CONFIG", "AdapterInfo", "is_adapter_folder"]  # the reader and the export: import their modules
