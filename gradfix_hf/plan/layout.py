"""The output model's layout: the task model class built on the meta device from θ_B's config (no weights),
with its parameter and buffer names, shapes, base-model prefix and tied-weight aliases."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers

from ..errors import CompatibilityError
from .vocabulary import vocab_size


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
    #: parameters with one row per token (input and output embeddings, an output bias): aligned by token string
    #: when θ_B's vocabulary differs from θ_A's (gradfix_hf/plan/vocabulary.py)
    vocabulary_rows: frozenset = frozenset()

    @property
    def model_class(self):
        return getattr(transformers, self.auto_class_name)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every output tensor (parameters, then buffers) with its shape, in the model's order."""
        return {**self.parameters, **self.buffers}


def build_layout(auto_class_name: str, config, trust_remote_code: bool = False) -> TargetLayout:
    """The layout of ``auto_class_name`` on ``config`` (which gets the built class as its ``architectures``)."""
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
                        prefix=model.base_model_prefix or "", aliases=aliases, base_parameters=base_parameters,
                        vocabulary_rows=_token_row_parameters(model))


def _token_row_parameters(model) -> frozenset:
    """The names of the parameters holding a row per token: the input embedding's weight, the output embedding's
    weight and bias (one name for tied weights, as ``named_parameters`` lists a shared parameter once)."""
    names = {id(p): n for n, p in model.named_parameters()}
    modules = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            modules.append(getattr(model, getter)())
        except (AttributeError, NotImplementedError):
            continue
    rows = vocab_size(model.config)
    found = {names[id(t)] for m in modules if m is not None for t in (getattr(m, "weight", None),
                                                                      getattr(m, "bias", None))
             if isinstance(t, torch.nn.Parameter) and id(t) in names and t.dim() >= 1 and t.shape[0] == rows}
    return frozenset(found)