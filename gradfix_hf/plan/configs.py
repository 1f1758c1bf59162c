"""Configs of θ_A, θ_A^ft, θ_B (and θ_B^ft) checked against each other: one architecture, one vocabulary size
(unless θ_A's and θ_B's token rows are lined up by token string, :mod:`.vocabulary`); LoRA adapters bound to their
bases; the task config of the output."""
from __future__ import annotations

import json
from pathlib import Path

import transformers

from ..errors import CompatibilityError
from ..hub import ResolvedModel
from ..lora import adapter_model_config, bind_base, bound_base
from .roles import ADAPTER_BASES, SOURCE, SOURCE_FT, TARGET
from .vocabulary import vocab_size

HEAD_CONFIG_FIELDS = ("num_labels", "id2label", "label2id", "problem_type")


def load_config(model: ResolvedModel, trust_remote_code: bool = False) -> transformers.PretrainedConfig:
    """The model's ``config.json``; a LoRA adapter stands for its base's config with the adapter's label set."""
    if model.is_adapter:
        base_config = load_config(bound_base(model), trust_remote_code)
        return adapter_model_config(model, base_config, HEAD_CONFIG_FIELDS, trust_remote_code)
    if not trust_remote_code and _needs_own_code(model.local_dir):
        raise CompatibilityError(f"{model.role} ({model.name}): its config.json names the model's own code "
                                 "(auto_map); gradfix runs a model's code only with trust_remote_code: true, and "
                                 "never under --dry-run (dry_run=True from Python).")
    try:
        return transformers.AutoConfig.from_pretrained(str(model.local_dir), trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise CompatibilityError(f"{model.role}: cannot read config.json of {model.name}: {exc}") from None


def _needs_own_code(folder: Path) -> bool:
    """Whether a model folder's config.json can only be read with Python code shipped with the model: it names
    some (``auto_map``) for a ``model_type`` transformers does not know (a known one uses transformers' class)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        raw = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False  # transformers reports an unreadable config itself
    return isinstance(raw, dict) and bool(raw.get("auto_map")) and raw.get("model_type") not in CONFIG_MAPPING


def bind_adapters(models: dict[str, ResolvedModel]) -> None:
    """Give every LoRA adapter among ``models`` its base model (θ_A for θ_A^ft); an adapter where a pre-trained
    model is expected is an error."""
    for role, model in models.items():
        if not model.is_adapter:
            continue
        if role not in ADAPTER_BASES:
            raise CompatibilityError(f"{role} ({model.name}) is a LoRA adapter, not a full model: an adapter is a "
                                     f"fine-tune; give it as {SOURCE_FT} with its base model as {SOURCE}.")
        bind_base(model, models[ADAPTER_BASES[role]])


def task_config(target_config, finetuned_config, objective_name: str):
    """θ_B's config, carrying the fine-tune's label set when the task has a classification head."""
    config = target_config.__class__.from_dict(target_config.to_dict())
    if objective_name == "sequence-classification":
        for name in HEAD_CONFIG_FIELDS:
            if getattr(finetuned_config, name, None) is not None:
                setattr(config, name, getattr(finetuned_config, name))
    return config


def check_configs(configs: dict[str, transformers.PretrainedConfig], names: dict[str, str],
                  token_rows_aligned: bool = False) -> None:
    """Same model_type for every model, and the same vocabulary size, except between θ_A's side and θ_B's when
    their token rows are lined up by token string (``token_rows_aligned``, :mod:`.vocabulary`)."""
    target_type = configs[TARGET].model_type
    for role, config in configs.items():
        if config.model_type != target_type:
            raise CompatibilityError(f"{role} ({names[role]}) has model_type {config.model_type!r} but {TARGET} "
                                     f"({names[TARGET]}) has {target_type!r}: GradFix needs one architecture.")
    for role, config in configs.items():
        other = SOURCE if token_rows_aligned and role in (SOURCE, SOURCE_FT) else TARGET
        if role != other and vocab_size(config) != vocab_size(configs[other]):
            raise CompatibilityError(f"{role} ({names[role]}) has vocabulary size {vocab_size(config)} but {other} "
                                     f"({names[other]}) has {vocab_size(configs[other])}: token ids would not line "
                                     "up (θ_A's and θ_B's are lined up by token string only when both ship a "
                                     "tokenizer).")
