"""The recipe as data: every section of a YAML recipe as frozen dataclasses, validated when read.

Nothing here loads a model, a tokenizer, a data set or a metric, or imports torch model code; the only thing
below it is the merge-method registry (:mod:`gradfix_hf.methods`), whose methods declare the parameters that
``method`` may hold. Running a recipe is :func:`gradfix_hf.transport`.

Names are imported from their modules on first use (PEP 562): reading a recipe file
(:func:`.validation.read_yaml_mapping`) needs only YAML, validating its ``method`` needs the registry (torch).
"""
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are; imported on first use
    from .data import (LOSS_TOKENS, SELECTION_ALIASES, SELECTIONS, SFT_FORMATS, DataConfig, EvaluationConfig,
                       canonical_selection, metric_names, prompt_error, template_error)
    from .few_shot import DEFAULT_FEW_SHOT_LRS, FEW_SHOT_CANDIDATES, FewShotStage
    from .method import (AUTO, DEFAULT_CANDIDATES, MethodConfig, candidate_key, candidate_label,
                         validate_candidates)
    from .models import ModelRef, ModelsConfig, ResolvedTask, TaskConfig
    from .output import DTYPES, LoraExportConfig, OutputConfig, parse_size
    from .recipe import DEFAULT_METRICS, OBJECTIVES, VOTE_DTYPES, VOTE_ENGINES, Recipe
    from .validation import build, check_choice, check_fields, read_yaml_mapping

_MODULES = {
    ".data": ["LOSS_TOKENS", "SELECTION_ALIASES", "SELECTIONS", "SFT_FORMATS", "DataConfig", "EvaluationConfig",
              "canonical_selection", "metric_names", "prompt_error", "template_error"],
    ".few_shot": ["DEFAULT_FEW_SHOT_LRS", "FEW_SHOT_CANDIDATES", "FewShotStage"],
    ".method": ["AUTO", "DEFAULT_CANDIDATES", "MethodConfig", "candidate_key", "candidate_label",
                "validate_candidates"],
    ".models": ["ModelRef", "ModelsConfig", "ResolvedTask", "TaskConfig"],
    ".output": ["DTYPES", "LoraExportConfig", "OutputConfig", "parse_size"],
    ".recipe": ["DEFAULT_METRICS", "OBJECTIVES", "VOTE_DTYPES", "VOTE_ENGINES", "Recipe"],
    ".validation": ["build", "check_choice", "check_fields", "read_yaml_mapping"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["Recipe", "ModelRef", "ModelsConfig", "TaskConfig", "ResolvedTask", "DataConfig", "EvaluationConfig",
           "MethodConfig", "OutputConfig", "LoraExportConfig", "OBJECTIVES", "VOTE_DTYPES", "VOTE_ENGINES", "DTYPES",
           "AUTO",
           "DEFAULT_CANDIDATES", "SELECTIONS", "SELECTION_ALIASES", "canonical_selection", "metric_names",
           "template_error", "prompt_error", "validate_candidates", "candidate_key", "candidate_label", "parse_size",
           "build", "check_choice", "check_fields", "read_yaml_mapping", "SFT_FORMATS", "LOSS_TOKENS",
           "DEFAULT_METRICS", "DEFAULT_FEW_SHOT_LRS", "FEW_SHOT_CANDIDATES", "FewShotStage"]
