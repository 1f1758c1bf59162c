"""Check that θ_A, θ_A^ft and θ_B line up, and plan what happens to every output tensor.

The target layout is the task model class (e.g. ``BertForSequenceClassification``) built on the meta device
from θ_B's config, with the fine-tune's label config. Every parameter of it is either

* transported: present in θ_A, θ_A^ft and θ_B → θ_B + α·(m ⊙ τ_A),
* copied from the fine-tune: absent from θ_A but present in θ_A^ft (a new classification head), or
* taken from θ_B unchanged (buffers, non-float tensors).

Anything else (a tensor missing from one model, a shape or vocabulary mismatch, NaN/inf) is an error that
names the model, the tensor and the reason, raised before any gradient work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers

from .checkpoint import CheckpointReader, align_names
from .errors import CompatibilityError
from .hub import ResolvedModel

SOURCE, SOURCE_FT, TARGET, TARGET_FT = ("models.source", "models.source_finetuned", "models.target",
                                        "models.target_finetuned")
HEAD_CONFIG_FIELDS = ("num_labels", "id2label", "label2id", "problem_type")


@dataclass
class TargetLayout:
    """Names, shapes and naming conventions of the output model (the task class on θ_B's config)."""

    auto_class_name: str
    config: transformers.PretrainedConfig
    parameters: dict[str, tuple[int, ...]]
    buffers: dict[str, tuple[int, ...]]
    prefix: str
    aliases: dict[str, list[str]]
    base_parameters: frozenset = frozenset()  # parameters of the base model (not of a task head)

    @property
    def model_class(self):
        return getattr(transformers, self.auto_class_name)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every output tensor (parameters, then buffers) with its shape, in the model's order."""
        return {**self.parameters, **self.buffers}


def load_config(model: ResolvedModel, trust_remote_code: bool = False) -> transformers.PretrainedConfig:
    if model.is_adapter:  # a LoRA adapter stands for its base's config with the adapter's label set
        from .lora.adapter_files import adapter_model_config

        return adapter_model_config(model, load_config, HEAD_CONFIG_FIELDS, trust_remote_code)
    try:
        return transformers.AutoConfig.from_pretrained(str(model.local_dir), trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise CompatibilityError(f"{model.role}: cannot read config.json of {model.name}: {exc}") from None


#: the model a LoRA adapter in each role is applied to (θ_A^ft on θ_A, θ_B^ft on θ_B)
ADAPTER_BASES = {SOURCE_FT: SOURCE, TARGET_FT: TARGET}


def bind_adapters(models: dict[str, ResolvedModel]) -> None:
    """Give every LoRA adapter among ``models`` its base model (θ_A for θ_A^ft); an adapter where a pre-trained
    model is expected is an error."""
    from .lora.adapter_files import bind_base

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


def build_layout(auto_class_name: str, config, trust_remote_code: bool = False) -> TargetLayout:
    auto = getattr(transformers, auto_class_name, None)
    if auto is None:
        raise CompatibilityError(f"model_class: transformers has no {auto_class_name!r}.")
    try:
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise CompatibilityError(f"models.target: {auto_class_name} cannot be built from θ_B's config "
                                 f"(model_type {config.model_type!r}): {exc}") from None
    parameters = {n: tuple(p.shape) for n, p in model.named_parameters()}
    persistent = set(model.state_dict())
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers() if n in persistent and n not in parameters}
    aliases: dict[str, list[str]] = {}
    for tied, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        aliases.setdefault(source, []).append(tied)
    base = model.base_model
    if base is model:
        base_parameters = frozenset(parameters)
    else:
        base_parameters = frozenset(f"{model.base_model_prefix}.{n}" for n, _ in base.named_parameters())
    config.architectures = [model.__class__.__name__]
    return TargetLayout(auto_class_name=auto_class_name, config=config, parameters=parameters, buffers=buffers,
                        prefix=model.base_model_prefix or "", aliases=aliases, base_parameters=base_parameters)


@dataclass
class TransportPlan:
    """What each output tensor is made of, with the readers that provide the inputs."""

    layout: TargetLayout
    readers: dict[str, CheckpointReader]
    keys: dict[str, dict[str, str]]
    transported: list[str] = field(default_factory=list)
    copied_from_finetune: list[str] = field(default_factory=list)
    from_target: list[str] = field(default_factory=list)
    ignored: dict[str, list[str]] = field(default_factory=dict)

    def tensor(self, role: str, name: str) -> torch.Tensor:
        """A float32 tensor of ``role`` under the target's name ``name``."""
        return self.readers[role].get_float(self.keys[role][name])

    def raw_tensor(self, role: str, name: str, *, checked: bool = False) -> torch.Tensor:
        """The tensor of ``role`` as stored (``checked``: and checked for NaN/inf)."""
        reader = self.readers[role]
        return (reader.get_checked if checked else reader.get)(self.keys[role][name])

    def summary(self) -> dict:
        return {"transported": len(self.transported), "copied_from_finetune": self.copied_from_finetune,
                "from_target": len(self.from_target), "ignored": {k: v for k, v in self.ignored.items() if v}}


def _vocab_size(config) -> Optional[int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def check_configs(configs: dict[str, transformers.PretrainedConfig], names: dict[str, str]) -> None:
    """Same model_type and vocabulary size for every model."""
    target_type = configs[TARGET].model_type
    for role, config in configs.items():
        if config.model_type != target_type:
            raise CompatibilityError(f"{role} ({names[role]}) has model_type {config.model_type!r} but {TARGET} "
                                     f"({names[TARGET]}) has {target_type!r}: GradFix needs one architecture.")
    target_vocab = _vocab_size(configs[TARGET])
    for role, config in configs.items():
        if _vocab_size(config) != target_vocab:
            raise CompatibilityError(f"{role} ({names[role]}) has vocabulary size {_vocab_size(config)} but "
                                     f"{TARGET} ({names[TARGET]}) has {target_vocab}: token ids would not line up.")


def check_tokenizers(tokenizers: dict[str, object], names: dict[str, str]) -> None:
    """Token ids must mean the same tokens in every model that ships a tokenizer."""
    reference_role = TARGET if tokenizers.get(TARGET) is not None else None
    if reference_role is None:
        return
    reference = tokenizers[reference_role].get_vocab()
    for role, tok in tokenizers.items():
        if tok is None or role == reference_role:
            continue
        vocab = tok.get_vocab()
        if vocab != reference:
            examples = []
            for token in sorted(set(vocab) | set(reference)):
                if vocab.get(token) != reference.get(token):
                    examples.append(f"{token!r} is id {vocab.get(token)} in {role} but "
                                    f"{reference.get(token)} in {TARGET}")
                if len(examples) == 3:
                    break
            raise CompatibilityError(f"{role} ({names[role]}): its tokenizer vocabulary differs from {TARGET}'s "
                                     f"({names[TARGET]}; {len(vocab)} vs {len(reference)} tokens; e.g. "
                                     + "; ".join(examples) + "): token ids would not mean the same tokens.")


def plan_transport(models: dict[str, ResolvedModel], layout: TargetLayout, *, check_values: bool = True,
                   transported_prefixes: Optional[tuple[str, ...]] = None) -> TransportPlan:
    """Line up every checkpoint with the target layout, or raise naming the tensor, model and reason.

    ``transported_prefixes`` (an objective's choice, e.g. CLIP's vision tower): only parameters under these
    names are transported; every other parameter is θ_B's, unchanged (and needs only θ_B to have it).
    """
    readers = {role: CheckpointReader(m) for role, m in models.items() if not m.is_adapter}
    if any(m.is_adapter for m in models.values()):  # θ_A + the adapter's merged delta, tensor by tensor
        from .lora.adapter_reader import LoraAdapterReader
        from .lora.targets import module_kinds

        kinds = module_kinds(layout)
        readers.update({role: LoraAdapterReader(m, readers[ADAPTER_BASES[role]], kinds)
                        for role, m in models.items() if m.is_adapter})
        readers = {role: readers[role] for role in models}
    names = list(layout.shapes)
    keys = {role: align_names(r, names, layout.prefix, layout.aliases) for role, r in readers.items()}
    plan = TransportPlan(layout=layout, readers=readers, keys=keys)
    expected = layout.shapes
    for name in names:
        present = {role for role in readers if name in keys[role]}
        is_param = name in layout.parameters
        if is_param and transported_prefixes is not None and not name.startswith(transported_prefixes) \
                and TARGET in present:
            plan.from_target.append(name)  # outside what the objective transports: θ_B's own tensor
            roles = [TARGET]
        elif is_param and {SOURCE, SOURCE_FT, TARGET} <= present:
            if TARGET_FT in readers and TARGET_FT not in present:
                raise CompatibilityError(f"tensor {name!r} is missing from {TARGET_FT} ({models[TARGET_FT].name}).")
            if not readers[TARGET].dtype(keys[TARGET][name]).is_floating_point:
                plan.from_target.append(name)
                continue
            plan.transported.append(name)
            roles = [r for r in (SOURCE, SOURCE_FT, TARGET, TARGET_FT) if r in readers]
        elif is_param and SOURCE_FT in present and SOURCE not in present and (
                TARGET not in present or name not in layout.base_parameters):
            # a new task head: absent from θ_A (and from θ_B, or outside θ_B's base model). A base-model tensor
            # that θ_B has but θ_A lacks is a name mismatch, not a head (falls through to the error below).
            plan.copied_from_finetune.append(name)
            roles = [SOURCE_FT]
        elif TARGET in present and not is_param:
            plan.from_target.append(name)
            roles = [TARGET]
        else:
            lacking = [r for r in (SOURCE, SOURCE_FT, TARGET) if r not in present]
            raise CompatibilityError(
                f"tensor {name!r} of {layout.auto_class_name} is missing from "
                + ", ".join(f"{r} ({models[r].name})" for r in lacking)
                + ": the checkpoints do not have the same tensor names."
            )
        for role in roles:
            shape = readers[role].shape(keys[role][name])
            if shape != expected[name]:
                raise CompatibilityError(f"tensor {name!r}: shape {list(shape)} in {role} ({models[role].name}) but "
                                         f"{list(expected[name])} in the layout built from {TARGET}'s config.json "
                                         f"({models[TARGET].name}).")
    used = {role: set(k.values()) for role, k in keys.items()}
    plan.ignored = {role: sorted(set(r.keys()) - used[role]) for role, r in readers.items()}
    if not plan.transported:
        raise CompatibilityError("no tensor is shared by θ_A, θ_A^ft and θ_B: nothing to transport.")
    if check_values:
        for role, reader in readers.items():
            for name in keys[role]:
                reader.get_checked(keys[role][name])
    return plan
