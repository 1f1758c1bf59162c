"""A PEFT LoRA adapter as a model reference: recognise its folder, read and vet its config, list its weight file,
bind it to the base model it is applied to, and give the task config it stands for.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (``adapter_model.bin`` only with
``allow_pickle``) and no full model weights. Its config is read with peft's own ``PeftConfig.from_pretrained``;
only plain LoRA is accepted (scaling·B·A, with rsLoRA, ``fan_in_fan_out``, ``rank_pattern``/``alpha_pattern``,
``lora_bias``, ``bias`` and ``modules_to_save``): variants whose merged delta is something else (DoRA, AdaLoRA,
aLoRA, PiSSA/OLoRA/CorDA/LoftQ initialisations that change the base, trainable tokens, parameter targets, layer
replication, ...) are refused with the reason and the workaround (merge with peft, save as a full model).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import CompatibilityError, ModelResolutionError

logger = logging.getLogger("gradfix_hf")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
#: LoraConfig fields that, when set, make the merged delta something other than scaling·B·A on the given base
_UNSUPPORTED = {
    "use_dora": "DoRA (use_dora), which rescales each merged weight by a learned magnitude",
    "use_qalora": "QA-LoRA (use_qalora), which pools the input groups of a quantised base",
    "use_bdlora": "BD-LoRA (use_bdlora), whose factors are block-diagonal",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens), which acts only after its invocation tokens",
    "arrow_config": "Arrow routing (arrow_config), which mixes several adapters per token",
    "monteclora_config": "MonteCLoRA (monteclora_config), which samples its factors",
    "velora_config": "VeLoRA (velora_config)",
    "kasa_config": "KaSA (kasa_config), which adds a singular-value scaling",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "layer_replication": "layer replication (layer_replication), which changes the architecture",
    "megatron_config": "Megatron-parallel LoRA layers (megatron_config)",
}
#: initialisations after which the adapter applies to a modified base, not to the base it names
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass
class AdapterInfo:
    """What gradfix needs from an adapter's config (peft's ``LoraConfig`` is kept in ``config``)."""

    folder: Path
    config: Any  # peft.LoraConfig

    @property
    def base_model_name_or_path(self) -> Optional[str]:
        return self.config.base_model_name_or_path

    def describe(self) -> dict:
        c = self.config
        return {"peft_type": "LORA", "r": c.r, "lora_alpha": c.lora_alpha, "use_rslora": bool(c.use_rslora),
                "target_modules": sorted(c.target_modules) if isinstance(c.target_modules, (set, list, tuple))
                else c.target_modules,
                "modules_to_save": sorted(c.modules_to_save) if c.modules_to_save else None,
                "task_type": str(c.task_type.value if hasattr(c.task_type, "value") else c.task_type)
                if c.task_type else None,
                "base_model_name_or_path": c.base_model_name_or_path}


def is_adapter_folder(folder: Path) -> bool:
    """An adapter folder: ``adapter_config.json`` and no full model weights (a merged model saved next to an
    adapter config is read as the full model)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and not any((folder / name).is_file() for name in _MODEL_WEIGHTS)


def adapter_weight_names(allow_pickle: bool) -> list[str]:
    """The files an adapter's weights may be in (what a Hub pull downloads)."""
    return [ADAPTER_SAFETENSORS] + ([ADAPTER_PICKLE] if allow_pickle else [])


def read_adapter_config(folder: Path, role: str, name: str) -> AdapterInfo:
    """peft's config of the adapter in ``folder``, refused with the reason if it is not plain LoRA."""
    where = f"{role} ({name})"
    path = Path(folder) / ADAPTER_CONFIG
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(f"{where}: cannot read the adapter config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelResolutionError(f"{where}: {path} is not a JSON object.")
    peft_type = str(raw.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ModelResolutionError(f"{where}: a {raw.get('peft_type')!r} adapter; only LoRA adapters (peft_type "
                                   "'LORA') can be a fine-tune here. Merge it into its base with peft "
                                   "(merge_and_unload) and save that as a full model.")
    try:
        from peft import PeftConfig
    except ImportError:  # peft is a dependency; a broken install still gets a clear message
        raise ModelResolutionError(f"{where}: reading a LoRA adapter needs the `peft` package.") from None
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:  # peft raises TypeError/ValueError on bad fields
        raise ModelResolutionError(f"{where}: peft cannot read the adapter config {path}: "
                                   f"{exc.__class__.__name__}: {exc}") from None
    for key, why in _UNSUPPORTED.items():
        value = getattr(config, key, None)
        if value not in (None, False, [], {}, ()):
            raise ModelResolutionError(
                f"{where}: the adapter uses {why}, so its merged delta is not scaling·B·A; gradfix reads plain "
                "LoRA only. Merge it into θ_A with peft (merge_and_unload), save that as a full model and give "
                "its folder instead.")
    init = config.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise ModelResolutionError(
            f"{where}: the adapter was initialised with {init!r}, which changes the base weights it applies to, so "
            "it is not a delta on the base it names. Convert it with peft (save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...)) or merge it and save a full model.")
    return AdapterInfo(folder=Path(folder), config=config)


def adapter_weight_files(folder: Path, role: str, name: str, allow_pickle: bool) -> tuple[list[Path], str]:
    """The adapter's weight file: safetensors, else pickle when allowed."""
    folder = Path(folder)
    if (folder / ADAPTER_SAFETENSORS).is_file():
        return [folder / ADAPTER_SAFETENSORS], "safetensors"
    if (folder / ADAPTER_PICKLE).is_file():
        if not allow_pickle:
            raise ModelResolutionError(
                f"{role} ({name}): the adapter only has pickle weights ({ADAPTER_PICKLE}); pickle can run code when "
                "loaded. Convert them to safetensors, or allow them with `allow_pickle: true` / `--allow-pickle`.")
        return [folder / ADAPTER_PICKLE], "pickle"
    found = sorted(p.name for p in folder.iterdir())
    raise ModelResolutionError(f"{role} ({name}): {folder} has {ADAPTER_CONFIG} but no adapter weights "
                               f"({ADAPTER_SAFETENSORS}); found {found}.")


def resolve_adapter(ref, role: str, folder: Path, allow_pickle: bool, repo_id: Optional[str] = None,
                    commit_hash: Optional[str] = None):
    """A :class:`~gradfix_hf.hub.ResolvedModel` for the adapter in ``folder`` (its base is bound later)."""
    from ..hub import ResolvedModel

    name = repo_id or str(folder)
    info = read_adapter_config(folder, role, name)
    files, fmt = adapter_weight_files(folder, role, name, allow_pickle)
    return ResolvedModel(ref=ref, role=role, local_dir=Path(folder), weight_files=files, weight_format=fmt,
                         repo_id=repo_id, commit_hash=commit_hash, extra={"adapter": info})


def _same_model(reference: Optional[str], base) -> bool:
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


def bind_base(adapter_model, base_model) -> None:
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


def adapter_model_config(adapter_model, load_config: Callable, fields, trust_remote_code: bool = False):
    """The config θ_A^ft stands for: its base's, with the label set of the adapter's head.

    Labels come from a ``config.json`` next to the adapter when there is one; otherwise, for a
    sequence-classification adapter, the class count is read from its saved head (``modules_to_save``) and the
    labels are named ``LABEL_i``.
    """
    info: AdapterInfo = adapter_model.extra["adapter"]
    base = adapter_model.extra.get("base")
    where = f"{adapter_model.role} (adapter {adapter_model.name})"
    if base is None:
        raise CompatibilityError(f"{where}: internal: the adapter is not bound to its base model.")
    base_config = load_config(base, trust_remote_code)
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


def _head_classes(adapter_model, info: AdapterInfo) -> Optional[int]:
    """The class count of a saved classification head: the smallest first dimension of the 2-D weights of the
    adapter's ``modules_to_save`` (classifier/score; a dense layer in front of it is square)."""
    from ..checkpoint import CheckpointReader

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


def describe(adapter_model) -> dict:
    """The adapter's part of a model's description in reports."""
    info: AdapterInfo = adapter_model.extra["adapter"]
    out = info.describe()
    if "base_matches" in adapter_model.extra:
        out["base_matches"] = adapter_model.extra["base_matches"]
    return out


__all__ = ["ADAPTER_CONFIG", "AdapterInfo", "adapter_model_config", "adapter_weight_files", "adapter_weight_names",
           "bind_base", "describe", "is_adapter_folder", "read_adapter_config", "resolve_adapter"]
