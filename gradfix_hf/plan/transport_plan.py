"""Check that θ_A, θ_A^ft and θ_B line up, and plan what happens to every output tensor.

The target layout is the task model class (e.g. ``BertForSequenceClassification``) built on the meta device
from θ_B's config, with the fine-tune's label config. Every parameter of it is either

* transported: present in θ_A, θ_A^ft and θ_B → θ_B + α·(m ⊙ τ_A); among them the *unmoved* ones, whose τ_A is
  zero everywhere (a module a LoRA fine-tune did not target, a frozen embedding): their output is θ_B's tensor
  for any mask, so they get no vote (and no per-sample gradient work),
* copied from the fine-tune: absent from θ_A but present in θ_A^ft (a new classification head), or
* taken from θ_B unchanged (buffers, non-float tensors).

A new release whose vocabulary differs from θ_A's has θ_A's side read in θ_B's token rows (:mod:`.vocabulary`).
Anything else (a tensor missing from one model, a shape mismatch, NaN/inf) is an error that names the model, the
tensor and the reason, raised before any gradient work.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import CompatibilityError
from ..hub import ResolvedModel
from ..lora import LoraAdapterReader, module_kinds
from ..storage import CheckpointReader, align_names, tensors_fingerprint
from .alignment import PermutedReader, weight_matching
from .alignment import summary as alignment_summary
from .layout import TargetLayout
from .roles import ADAPTER_BASES, SOURCE, SOURCE_FT, TARGET, TARGET_FT
from .vocabulary import AlignedRowsReader, VocabularyAlignment


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
    #: transported tensors whose τ_A is zero everywhere; None when not looked at (a plan made without reading the
    #: checkpoints' values, e.g. for a merge from votes files, which checks each tensor as it reads it instead)
    unmoved: Optional[list[str]] = None
    #: θ_B's vocabulary lined up with θ_A's by token string (None: the same token ids)
    vocabulary: Optional[VocabularyAlignment] = None
    #: ``align: weight-matching``: each group's match quality (None: no alignment)
    alignment: Optional[dict] = None

    def tensor(self, role: str, name: str) -> torch.Tensor:
        """A float32 tensor of ``role`` under the target's name ``name``."""
        return self.readers[role].get_float(self.keys[role][name])

    def raw_tensor(self, role: str, name: str, *, checked: bool = False) -> torch.Tensor:
        """The tensor of ``role`` as stored (``checked``: and checked for NaN/inf)."""
        reader = self.readers[role]
        return (reader.get_checked if checked else reader.get)(self.keys[role][name])

    @functools.cached_property
    def target_fingerprint(self) -> str:
        """A fingerprint of θ_B's transported tensors: what a votes file records, and is checked against, so that
        votes of another model with the same shapes are not taken for this one's."""
        return tensors_fingerprint(self.readers[TARGET], {name: self.keys[TARGET][name] for name in self.transported})

    @property
    def moved(self) -> list[str]:
        """The transported tensors that τ_A changes (all of them when :attr:`unmoved` is not known)."""
        unmoved = set(self.unmoved or ())
        return [name for name in self.transported if name not in unmoved]

    def summary(self) -> dict:
        return {"transported": len(self.transported), "unmoved": None if self.unmoved is None else len(self.unmoved),
                "copied_from_finetune": self.copied_from_finetune,
                "from_target": len(self.from_target), "ignored": {k: v for k, v in self.ignored.items() if v},
                **({"vocabulary": self.vocabulary.summary()} if self.vocabulary is not None else {}),
                **({"alignment": self.alignment} if self.alignment is not None else {})}


def plan_transport(models: dict[str, ResolvedModel], layout: TargetLayout, *, check_values: bool = True,
                   transported_prefixes: Optional[tuple[str, ...]] = None,
                   vocabulary: Optional[VocabularyAlignment] = None, align: str = "none") -> TransportPlan:
    """Line up every checkpoint with the target layout, or raise naming the tensor, model and reason.

    ``transported_prefixes`` (an objective's choice, e.g. CLIP's vision tower): only parameters under these
    names are transported; every other parameter is θ_B's, unchanged (and needs only θ_B to have it).
    ``vocabulary``: θ_A's and θ_A^ft's token rows are read in θ_B's order (:mod:`.vocabulary`). ``align:
    weight-matching``: their hidden units and heads too, permuted onto θ_B's (:mod:`.alignment`).
    """
    readers = {role: CheckpointReader(m) for role, m in models.items() if not m.is_adapter}
    if any(m.is_adapter for m in models.values()):  # θ_A + the adapter's merged delta, tensor by tensor
        kinds = module_kinds(layout)
        readers.update({role: LoraAdapterReader(m, readers[ADAPTER_BASES[role]], kinds)
                        for role, m in models.items() if m.is_adapter})
        readers = {role: readers[role] for role in models}
    names = list(layout.shapes)
    keys = {role: align_names(r, names, layout.prefix, layout.aliases) for role, r in readers.items()}
    if vocabulary is not None:  # θ_A's side read in θ_B's token rows
        for role in (SOURCE, SOURCE_FT):
            rows = {keys[role][n]: keys[TARGET][n] for n in layout.vocabulary_rows
                    if n in keys[role] and n in keys[TARGET]}
            readers[role] = AlignedRowsReader(readers[role], vocabulary, rows, readers[TARGET])
    alignment = None
    if align == "weight-matching":  # θ_A's units permuted onto θ_B's, one layer's group at a time
        permutations, quality = weight_matching(names, layout.config.model_type, layout.config, readers[SOURCE],
                                                readers[TARGET], keys[SOURCE], keys[TARGET])
        for role in (SOURCE, SOURCE_FT):  # θ_A^ft's keys name the same tensors as θ_A's
            moved = {keys[role][n]: permutations[keys[SOURCE][n]] for n in names
                     if n in keys[SOURCE] and keys[SOURCE][n] in permutations and n in keys[role]}
            readers[role] = PermutedReader(readers[role], moved)
        alignment = alignment_summary(quality)
    plan = TransportPlan(layout=layout, readers=readers, keys=keys, vocabulary=vocabulary, alignment=alignment)
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
        plan.unmoved = unmoved_tensors(plan)
    return plan


def unmoved_tensors(plan: TransportPlan) -> list[str]:
    """The transported tensors whose τ_A = θ_A^ft − θ_A is exactly zero (compared in the fp32 the merge uses)."""
    return [name for name in plan.transported
            if torch.equal(plan.tensor(SOURCE_FT, name), plan.tensor(SOURCE, name))]
