"""The recipe as data: every section of a YAML recipe as frozen dataclasses, validated when read.

Nothing here loads a model, a tokenizer, a data set or a metric, or imports torch model code; the only thing
below it is the merge-method registry (:mod:`gradfix_hf.methods`), whose methods declare the parameters that
``method`` may hold. Running a recipe is :func:`gradfix_hf.transport`.
"""
from .data import (SELECTION_ALIASES, SELECTIONS, DataConfig, EvaluationConfig, canonical_selection, metric_names,
                   prompt_error, template_error)
from .method import (AUTO, DEFAULT_CANDIDATES, MethodConfig, candidate_key, candidate_label,
                     validate_candidates)
from .models import ModelRef, ModelsConfig, ResolvedTask, TaskConfig
from .output import DTYPES, LoraExportConfig, OutputConfig, parse_size
from .recipe import OBJECTIVES, VOTE_ENGINES, Recipe
from .validation import build, check_choice, check_fields, read_yaml_mapping

__all__ = ["Recipe", "ModelRef", "ModelsConfig", "TaskConfig", "ResolvedTask", "DataConfig", "EvaluationConfig",
           "MethodConfig", "OutputConfig", "LoraExportConfig", "OBJECTIVES", "VOTE_ENGINES", "DTYPES", "AUTO",
           "DEFAULT_CANDIDATES", "SELECTIONS", "SELECTION_ALIASES", "canonical_selection", "metric_names",
           "template_error", "prompt_error", "validate_candidates", "candidate_key", "candidate_label", "parse_size",
           "build", "check_choice", "check_fields", "read_yaml_mapping"]
