"""Stage 2 (data-free, cheap, repeatable): the streaming merge θ_B + α·delta, tensor by tensor.

:mod:`.streaming` computes each output tensor from memory-mapped inputs with a method of the registry
(:mod:`gradfix_hf.methods`) and writes sharded safetensors; :mod:`.lora_export` writes the same result as a LoRA
adapter for θ_B; :mod:`.drift` measures how far θ_B drifted from θ_A and how the vote agrees with τ_A.
"""
from .drift import drift_report, drift_table
from .lora_export import load_adapter_model, write_lora_adapter
from .streaming import (MergeJob, apply_in_memory, compute_thresholds, iter_deltas, merge_to_folder, output_layout,
                        output_tensor)

__all__ = ["MergeJob", "apply_in_memory", "compute_thresholds", "iter_deltas", "merge_to_folder", "output_layout",
           "output_tensor", "write_lora_adapter", "load_adapter_model", "drift_report", "drift_table"]
