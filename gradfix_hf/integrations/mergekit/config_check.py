"""Checking a mergekit config before mergekit runs: mergekit silently ignores parameters it does not know and
reads no tensor until the merge, so a misspelt parameter, a missing θ_A or a votes file of the wrong kind would
only show as wrong tensors or a failure halfway. :func:`check_config` says so before any tensor is read.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ...errors import RecipeError, did_you_mean
from ...hub import looks_local, resolve_model
from ...methods import registered_methods as gradfix_registry
from ...recipe import ModelRef, read_yaml_mapping
from .inputs import check_votes, load_votes, same_file, votes_aggregation
from .parameters import check_alpha, mergekit_name, per_model_parameters, shared_parameters, validate_parameters

logger = logging.getLogger("gradfix_hf")


def _raw_config(config: Any) -> dict:
    import yaml

    if isinstance(config, (str, os.PathLike)):
        raw = read_yaml_mapping(Path(config), "mergekit config", "a mergekit config must be a YAML mapping")
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:  # a mergekit MergeConfiguration
        raw = yaml.safe_load(config.to_yaml())
    if not isinstance(raw, Mapping):
        raise RecipeError("mergekit config: expected a YAML mapping.")
    return dict(raw)


def _unknown(key: str, valid: Sequence[str], where: str, method: str) -> RecipeError:
    extra = did_you_mean(key, valid) or f" Valid: {', '.join(valid)}."
    return RecipeError(f"{where}: unknown parameter {key!r} for merge_method {method!r} (mergekit would ignore "
                       f"it).{extra}")


def _scalar(value: Any) -> bool:
    return not isinstance(value, (list, tuple, Mapping))


def check_config(config: Any) -> Optional[str]:
    """Check a mergekit config (path, mapping or ``MergeConfiguration``) that uses a GradFix method, before any
    tensor is read: parameter names (mergekit silently ignores unknown ones) and values, each fine-tune's
    ``source``, its votes file, and what a per-tensor method cannot do. Returns the method's mergekit name, or
    None for other methods (left to mergekit). ``gradfix-mergekit-yaml`` runs it first."""
    raw = _raw_config(config)
    name = raw.get("merge_method")
    methods = {mergekit_name(m.name): m for m in gradfix_registry().values()}
    if name not in methods:
        return None
    method = methods[name]
    for key in ("slices", "modules"):
        if raw.get(key):
            raise RecipeError(f"{key}: merge_method {name!r} takes a `models:` list only: it reads θ_A and the votes "
                              f"under the output tensor's name, which {key} may take from other input layers.")
    for key in ("tokenizer", "tokenizer_source"):
        if raw.get(key) is not None:
            raise RecipeError(f"{key}: merge_method {name!r} needs θ_A, the fine-tunes and θ_B to share one "
                              "vocabulary (no embedding permutation); remove it (the base model's tokenizer is "
                              "copied).")
    if not raw.get("base_model"):
        raise RecipeError(f"base_model: merge_method {name!r} needs the target θ_B as base_model.")
    models = raw.get("models") or []
    for model in [raw["base_model"]] + [m.get("model") if isinstance(m, Mapping) else m for m in models]:
        if isinstance(model, str) and Path(model).exists() and not Path(model).is_absolute():
            logger.warning("%s is a relative path: mergekit's model card looks relative paths up on the Hub (an "
                           "error offline, after the weights are written); prefer an absolute path.", model)
    method.check_tasks(len(models), "models")
    shared, per_model = shared_parameters(method), per_model_parameters(method)
    top = raw.get("parameters") or {}
    for key in top:
        if key not in shared + per_model:
            raise _unknown(key, shared + per_model, "parameters", name)
    own = {k: v for k, v in top.items() if k in method.parameter_names() and _scalar(v)}
    params = validate_parameters(method, own, "parameters")
    alpha, force = top.get("alpha", 1.0), top.get("force", False)
    if _scalar(alpha) and _scalar(force):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise RecipeError(f"parameters.alpha: must be a number, got {alpha!r}.")
        check_alpha(float(alpha), bool(force), "parameters")
    needs_votes = method.sign_source(params) is not None
    seen_votes = set()
    for i, model in enumerate(models):
        where = f"models[{i}] ({model.get('model') if isinstance(model, Mapping) else model})"
        own_params = (model.get("parameters") if isinstance(model, Mapping) else None) or {}
        for key in own_params:
            if key in shared:
                raise RecipeError(f"{where}.parameters.{key}: a global parameter of {name!r}: put it under the "
                                  "top-level `parameters:` (mergekit ignores it per model).")
            if key not in per_model:
                raise _unknown(key, per_model, f"{where}.parameters", name)
        source = own_params.get("source", top.get("source"))
        if not isinstance(source, str) or not source:
            raise RecipeError(f"{where}: no `source` (θ_A, the pre-trained model this fine-tune started from) as a "
                              "path or Hub id, under the model's parameters or the top-level parameters.")
        _check_local_source(source, where)
        if needs_votes:
            votes = own_params.get("votes", top.get("votes"))
            if not isinstance(votes, str) or not votes:
                raise RecipeError(f"{where}: no `votes` file: mask {params['mask']!r} needs the target's votes "
                                  "(gradfix votes RECIPE -o FILE).")
            check_votes(load_votes(votes), votes, votes_aggregation(params, method))
            seen_votes.add(same_file(votes))
    if needs_votes and method.shared_vote and len(seen_votes) > 1:
        raise RecipeError(f"models: merge_method {name!r} votes once for every source: give every model the same "
                          f"votes file (got {sorted(seen_votes)}).")
    return name


def _check_local_source(source: str, where: str) -> None:
    if looks_local(source):
        resolve_model(ModelRef(path=source), role=f"{where}.parameters.source")
