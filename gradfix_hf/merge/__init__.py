"""Stage 2 (data-free, cheap, repeatable): masks and the streaming merge into an output folder."""
from .masks import keep_mask, sign_agreement_mask, transported
from .streaming import MaskSpec, apply_in_memory, load_base_model, merge_to_folder, output_tensor
from .writer import ShardedSafetensorsWriter

__all__ = ["keep_mask", "sign_agreement_mask", "transported", "MaskSpec", "apply_in_memory", "load_base_model",
           "merge_to_folder", "output_tensor", "ShardedSafetensorsWriter"]
