"""Stage 2 (data-free, cheap, repeatable): mask variants, merge methods and the streaming merge."""
from .masks import MASK_VARIANTS, keep_mask, masked_task_vector, sign_agreement_mask, transported
from .methods import MergeMethod, get, register, registered_methods
from .streaming import MergeJob, apply_in_memory, load_base_model, merge_to_folder, output_tensor
from .writer import ShardedSafetensorsWriter

__all__ = ["MASK_VARIANTS", "keep_mask", "masked_task_vector", "sign_agreement_mask", "transported", "MergeMethod",
           "get", "register", "registered_methods", "MergeJob", "apply_in_memory", "load_base_model",
           "merge_to_folder", "output_tensor", "ShardedSafetensorsWriter"]
