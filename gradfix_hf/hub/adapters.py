"""A PEFT LoRA adapter as a model reference: recognise its folder, read and vet its config, list its weight file.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (``adapter_model.bin`` only with
``allow_pickle``) and no full model weights. Its config is read with peft's own ``PeftConfig.from_pretrained``;
only plain LoRA is accepted (scaling·B·A, with rsLoRA, ``fan_in_fan_out``, ``rank_pattern``/``alpha_pattern``,
``lora_bias``, ``bias`` and ``modules_to_save``): variants whose merged delta is something else (DoRA, AdaLoRA,
aLoRA, PiSSA/OLoRA/CorDA/LoftQ initialisations that change the base, trainable tokens, parameter targets, layer
replication, ...) are refused with the reason and the workaround (merge with peft, save as a full model). Binding
an adapter to its base and reading its delta: :mod:`gradfix_hf.lora`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelResolutionError
from ..recipe import ModelRef
from .resolved import ResolvedModel

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

    @property
    def modules_to_save(self) -> list[str]:
        """The modules the adapter stores whole (peft's ``modules_to_save``)."""
        return sorted(self.config.modules_to_save or [])

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


def resolve_adapter(ref: ModelRef, role: str, folder: Path, allow_pickle: bool, repo_id: Optional[str] = None,
                    commit_hash: Optional[str] = None) -> ResolvedModel:
    """A :class:`~gradfix_hf.hub.ResolvedModel` for the adapter in ``folder`` (its base is bound later)."""
    name = repo_id or str(folder)
    info = read_adapter_config(folder, role, name)
    files, fmt = adapter_weight_files(folder, role, name, allow_pickle)
    return ResolvedModel(ref=ref, role=role, local_dir=Path(folder), weight_files=files, weight_format=fmt,
                         repo_id=repo_id, commit_hash=commit_hash, extra={"adapter": info})
