"""A LoRA adapter bound to its base: which model it is applied to (θ_A for θ_A^ft), and the config it stands for
(its base's, with the label set of the adapter's head)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import CompatibilityError
from ..hub import AdapterInfo, ResolvedModel
from ..storage import CheckpointReader

logger = logging.getLogger("gradfix_hf")


def _same_model(reference: Optional[str], base: ResolvedModel) -> bool:
    """Whether the adapter's ``base_model_name_or_path`` names ``base`` (a Hub id or a local folder)."""
    if not reference:
        return False
    if base.repo_id and reference.strip("/") == base.repo_id:
        return True
    candidates = {str(base.ref.path), str(base.local_dir)}
    if reference in candidates:
        return True
    try:
        return Path(reference).expanduser().resolve() == Path(base.local_dir).resolve()
    except OSError:
        return False


def bind_base(adapter_model: ResolvedModel, base_model: ResolvedModel) -> None:
    """Record the model the adapter is applied to (θ_A for θ_A^ft); warn when its config names another one."""
    info: AdapterInfo = adapter_model.extra["adapter"]
    adapter_model.extra["base"] = base_model
    named = info.base_model_name_or_path
    matches = _same_model(named, base_model)
    adapter_model.extra["base_matches"] = matches
    if not matches:
        logger.warning("%s: the adapter %s names %r as its base, not %s (%s); its delta is applied to %s anyway "
                       "(checked by module names and shapes).", adapter_model.role, adapter_model.name, named,
                       base_model.name, base_model.role, base_model.role)


def _head_from_adapter_config(config, folder: Path, where: str, trust_remote_code: bool, fields) -> bool:
    """Copy the label fields of a config.json shipped next to the adapter; False if there is none."""
    path = folder / "config.json"
    if not path.is_file():
        return False
    import transformers

    try:
        own = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise CompatibilityError(f"{where}: cannot read its config.json: {exc}") from None
    if own.model_type != config.model_type:
        raise CompatibilityError(f"{where}: its config.json has model_type {own.model_type!r} but its base has "
                                 f"{config.model_type!r}: the adapter was made for another architecture.")
    for name in fields:
        if getattr(own, name, None) is not None:
            setattr(config, name, getattr(own, name))
    return True


def bound_base(adapter_model: ResolvedModel) -> ResolvedModel:
    """The model :func:`bind_base` bound the adapter to."""
    base = adapter_model.extra.get("base")
    if base is None:
        raise CompatibilityError(f"{adapter_model.role} (adapter {adapter_model.name}): internal: the adapter is not "
                                 "bound to its base model.")
    return base


def adapter_model_config(adapter_model: ResolvedModel, base_config, fields: Sequence[str],
                         trust_remote_code: bool = False):
    """The config θ_A^ft stands for: its base's (``base_config``), with the label set of the adapter's head.

    Labels (``fields``) come from a ``config.json`` next to the adapter when there is one; otherwise, for a
    sequence-classification adapter, the class count is read from its saved head (``modules_to_save``) and the
    labels are named ``LABEL_i``.
    """
    info: AdapterInfo = adapter_model.extra["adapter"]
    base = bound_base(adapter_model)
    where = f"{adapter_model.role} (adapter {adapter_model.name})"
    config = base_config.__class__.from_dict(base_config.to_dict())
    mapping = (info.config.auto_mapping or {}) if isinstance(info.config.auto_mapping, dict) else {}
    class_name = mapping.get("base_model_class")
    if class_name:
        import transformers

        cls = getattr(transformers, class_name, None)
        model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
        if model_type and model_type != config.model_type:
            raise CompatibilityError(f"{where}: the adapter was made for {class_name} (model_type {model_type!r}) "
                                     f"but {base.role} ({base.name}) has model_type {config.model_type!r}.")
    if _head_from_adapter_config(config, adapter_model.local_dir, where, trust_remote_code, fields):
        return config
    task_type = info.config.task_type
    task_type = getattr(task_type, "value", task_type)
    if task_type == "SEQ_CLS":
        labels = _head_classes(adapter_model, info)
        if labels is not None and labels != config.num_labels:
            config.num_labels = labels
    return config


def _head_classes(adapter_model: ResolvedModel, info: AdapterInfo) -> Optional[int]:
    """The class count of a saved classification head: the smallest first dimension of the 2-D weights of the
    adapter's ``modules_to_save`` (classifier/score; a dense layer in front of it is square)."""
    targets = set(info.config.modules_to_save or []) | {"classifier", "score"}
    reader = CheckpointReader(adapter_model)
    counts = []
    for key in reader.keys():
        name = key.removeprefix("base_model.model.")
        if "lora_" in name or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")].replace(".modules_to_save", "")
        if any(module == t or module.endswith("." + t) or f".{t}." in f".{module}." for t in targets):
            shape = reader.shape(key)
            if len(shape) == 2:
                counts.append(shape[0])
    reader.close()
    return min(counts) if counts else None
