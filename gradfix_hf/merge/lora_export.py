"""The transported result as a PEFT LoRA adapter for θ_B (``output.as_lora``), by truncated SVD per module.

The output tensors are the streaming merge's (:func:`~gradfix_hf.merge.streaming.output_tensor`, one at a time);
for each one D = output − θ_B, the masked delta that a full output folder would add to θ_B. Where D ≠ 0:

* the weight of a Linear, GPT-2 Conv1D or Embedding module becomes LoRA factors: D = U·S·Vᵀ, rank k (``rank``,
  or the smallest k whose singular values keep ``energy`` of ‖D‖²_F, capped by ``rank`` when both are given),
  B = U_k·√S_k and A = √S_k·V_kᵀ (transposed for Conv1D, whose weights are stored (in, out), and for embeddings,
  as peft's ``fan_in_fan_out`` and ``lora_embedding_A/B`` expect), lora_alpha = k so that scaling = 1. Each
  module's relative reconstruction error ‖D − B·A‖_F / ‖D‖_F (with the factors as stored) goes into the report;
* a changed bias is stored whole, under the key peft loads into the base layer (``…base_layer.bias`` for an
  adapted module, ``….bias`` otherwise), with ``bias: all`` so a re-save by peft keeps it;
* any other changed tensor (LayerNorm/RMSNorm weights, the classification head copied from the fine-tune, a
  head of a sequence classifier, a module named in ``modules_to_save``: by default those the LoRA fine-tune
  stored whole, e.g. a chat fine-tune's ``embed_tokens``/``lm_head``) makes its module a ``modules_to_save``
  module, stored whole (exact);
* a weight tied to another module's (GPT-2's ``lm_head`` to ``wte``) gets the same factors on both modules, so
  ``PeftModel.from_pretrained`` gives both paths the delta, as the tied full model does. (peft's
  ``merge_and_unload`` then adds it twice to the shared tensor: the report lists these modules under ``tied``.)

Files: ``adapter_config.json`` written by peft's ``LoraConfig.save_pretrained`` (``base_model_name_or_path`` = θ_B,
``revision`` = its commit, per-module ranks in ``rank_pattern``/``alpha_pattern``) and ``adapter_model.safetensors``
with peft's key names, so ``PeftModel.from_pretrained(θ_B model, folder)`` loads it.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import GradFixError
from ..hub import ADAPTER_SAFETENSORS
from ..lora import CONV1D, EMBEDDING, LINEAR, module_kinds
from ..plan import TARGET
from .streaming import MergeJob, compute_thresholds, output_layout, output_tensor

logger = logging.getLogger("gradfix_hf")
PREFIX = "base_model.model."
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM", "causal-lm": "CAUSAL_LM",
              "sft": "CAUSAL_LM"}
SEQ_CLS_HEADS = ("classifier", "score")  # peft's PeftModelForSequenceClassification keeps these whole


@dataclass
class Factors:
    """Truncated SVD of one delta, split as √S on both sides; ``rank``, ``relative_error`` as stored."""

    left: torch.Tensor  # U_k·√S_k  (rows of D, k)
    right: torch.Tensor  # √S_k·V_kᵀ (k, columns of D)
    rank: int
    relative_error: float
    energy_kept: float
    norm: float


def truncated_svd(delta: torch.Tensor, rank: Optional[int], energy: Optional[float],
                  dtype: torch.dtype = torch.float32) -> Factors:
    """Factors of ``delta`` (2-D, fp32) at the rank the spec asks, never above its numerical rank (singular values
    below fp32 noise are dropped: an exactly low-rank delta, e.g. a LoRA adapter's, keeps its own rank); the error
    is measured with the factors rounded to ``dtype`` (what is stored)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    power = s.double() ** 2
    total = float(power.sum())
    if energy is not None:
        kept = torch.cumsum(power, 0) / total
        k = int((kept < energy - 1e-12).sum()) + 1  # the smallest k keeping at least `energy` of ‖D‖²
        if rank is not None:
            k = min(k, rank)
    else:
        k = rank
    numerical = int((s > s[0] * max(delta.shape) * torch.finfo(torch.float32).eps).sum())  # beyond: fp32 noise
    k = max(1, min(k, numerical))
    root = s[:k].sqrt()
    left = (u[:, :k] * root).to(dtype)
    right = (root[:, None] * vh[:k]).to(dtype)
    norm = math.sqrt(total)
    error = float(torch.linalg.matrix_norm(delta - left.float() @ right.float())) / norm
    return Factors(left, right, k, error, float(power[:k].sum()) / total, norm)


def _lora_state(module: str, kind: str, factors: Factors) -> dict[str, torch.Tensor]:
    """peft's keys and tensors for ``module`` so that its merged delta is D (the weight's own layout)."""
    if kind == EMBEDDING:  # delta = (B·A)ᵀ: B·A = Dᵀ, B = lora_embedding_B (dim, k), A = lora_embedding_A (k, num)
        return {f"{PREFIX}{module}.lora_embedding_A": factors.left.T.contiguous(),
                f"{PREFIX}{module}.lora_embedding_B": factors.right.T.contiguous()}
    if kind == CONV1D:  # fan_in_fan_out: delta = (B·A)ᵀ with D stored (in, out)
        b, a = factors.right.T, factors.left.T
    else:
        b, a = factors.left, factors.right
    return {f"{PREFIX}{module}.lora_A.weight": a.contiguous(), f"{PREFIX}{module}.lora_B.weight": b.contiguous()}


def _module_of(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def write_lora_adapter(job: MergeJob, folder, *, rank: Optional[int] = None, energy: Optional[float] = None,
                       target=None, objective: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                       modules_to_save: Sequence[str] = (), progress: bool = False) -> tuple[dict, dict]:
    """Write ``job``'s result as a LoRA adapter for θ_B into ``folder``; return (per-tensor statistics as
    :func:`~gradfix_hf.merge.streaming.merge_to_folder` gives them, the adapter report). Modules named in
    ``modules_to_save`` (matched as peft matches them: the name or its last components) are stored whole."""
    from peft import LoraConfig

    if rank is None and energy is None:
        raise GradFixError("output.as_lora: give a rank, an energy threshold, or both.")
    folder = Path(folder)
    job = compute_thresholds(job, progress=progress)
    head = job.head
    layout = head.layout
    kinds = module_kinds(layout)
    task_type = TASK_TYPES.get(objective or "")
    copied = set(head.copied_from_finetune)

    # what a full output folder would store (output.dtype, else θ_B's, else the fine-tune's)
    stored = {name: stored_dtype for name, stored_dtype, _ in output_layout(head, dtype)}

    def stored_whole(module: str) -> bool:
        heads = SEQ_CLS_HEADS if task_type == "SEQ_CLS" else ()
        return any(module == h or module.startswith(h + ".") or module.endswith("." + h) for h in heads) or any(
            module == m or module.endswith("." + m) for m in modules_to_save)

    state: dict[str, torch.Tensor] = {}
    per_tensor: dict[str, dict] = {}
    lora: dict[str, dict] = {}
    save_modules: set[str] = set()
    biases: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    not_exported: dict[str, str] = {}
    squared_error = squared_norm = 0.0
    lora_parameters = dense_parameters = 0
    for name in tqdm(list(layout.parameters), desc="LoRA export", disable=not progress, unit="tensor"):
        module, attr = _module_of(name)
        if name in copied:
            if module:
                save_modules.add(module)
            else:
                not_exported[name] = "a top-level parameter (no module to save)"
            continue
        if name not in head.transported:
            continue
        out, stats = output_tensor(job, name)
        if stats is not None:
            per_tensor[name] = stats
        delta = out - head.tensor(TARGET, name)
        if not bool(torch.any(delta != 0)):
            continue
        kind = kinds.get(module)
        if attr == "weight" and kind in (LINEAR, CONV1D, EMBEDDING) and delta.dim() == 2 and not stored_whole(module):
            factors = truncated_svd(delta, rank, energy, stored[name])
            owners = [(module, kind)]
            for alias in layout.aliases.get(name, []):
                alias_module, alias_attr = _module_of(alias)
                alias_kind = kinds.get(alias_module)
                if alias_attr == "weight" and alias_kind in (LINEAR, CONV1D, EMBEDDING):
                    owners.append((alias_module, alias_kind))
                    tied[alias_module] = module
            for owner, owner_kind in owners:  # tied modules: the same factors, stored once per module
                state.update({k: v.clone() for k, v in _lora_state(owner, owner_kind, factors).items()})
                lora[owner] = {"tensor": name, "kind": owner_kind, "shape": list(delta.shape), "rank": factors.rank,
                               "relative_error": factors.relative_error, "energy_kept": factors.energy_kept}
            squared_error += (factors.relative_error * factors.norm) ** 2
            squared_norm += factors.norm ** 2
            lora_parameters += factors.rank * sum(delta.shape)
            dense_parameters += delta.numel()
        elif attr == "bias" and module:
            biases[name] = out.to(stored[name])
        elif module:
            save_modules.add(module)
        else:
            not_exported[name] = "a top-level parameter (no module to save)"
    for module in sorted(save_modules):
        if module in lora:
            raise GradFixError(f"internal: module {module!r} is both a LoRA target and a module to save.")
        for name in layout.parameters:
            if name.startswith(module + "."):
                value = output_tensor(job, name)[0]  # merged, or θ_B's / the fine-tune's head as stored
                state[f"{PREFIX}{name}"] = value.to(stored[name]) if value.is_floating_point() else value
    bias_keys = []
    for name, value in biases.items():
        module, _ = _module_of(name)
        if any(module == m or module.startswith(m + ".") for m in save_modules):
            continue  # stored whole with its module
        key = f"{PREFIX}{module}.base_layer.bias" if module in lora else f"{PREFIX}{name}"
        state[key] = value
        bias_keys.append(name)
    if not lora:  # peft refuses an adapter without LoRA modules ("No modules were targeted for adaptation")
        changed = "is zero everywhere (the mask kept nothing)" if not state else (
            f"changes no Linear/Conv1D/Embedding weight, only {len(state)} other tensor(s)")
        raise GradFixError(f"output.as_lora: the transported delta {changed}, so there is no LoRA adapter to write "
                           "(peft cannot load one without LoRA modules). Write the full model instead.")

    if not_exported:
        logger.warning("output.as_lora: %d changed tensor(s) cannot be carried by a LoRA adapter and are left out "
                       "(the adapter differs from the full model there): %s", len(not_exported), sorted(not_exported))
    ranks = {m: entry["rank"] for m, entry in lora.items()}
    r = max(ranks.values())
    pattern = {re.escape(m): k for m, k in sorted(ranks.items()) if k != r}
    config = LoraConfig(
        r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=pattern, alpha_pattern=dict(pattern),
        modules_to_save=sorted(save_modules) or None, bias="all" if bias_keys else "none",
        fan_in_fan_out=any(entry["kind"] == CONV1D for entry in lora.values()), lora_dropout=0.0,
        task_type=task_type, inference_mode=True,
        base_model_name_or_path=target.name if target is not None else None,
        revision=target.commit_hash if target is not None else None)
    config.save_pretrained(str(folder))
    save_file(dict(sorted(state.items())), str(folder / ADAPTER_SAFETENSORS), metadata={"format": "pt"})

    adapter_parameters = sum(t.numel() for t in state.values())
    errors = [entry["relative_error"] for entry in lora.values()]
    report = {
        "rank": rank, "energy": energy, "r": r, "task_type": task_type,
        "base_model_name_or_path": config.base_model_name_or_path,
        "totals": {
            "lora_modules": len(lora),
            "relative_error": math.sqrt(squared_error / squared_norm) if squared_norm else 0.0,
            "max_relative_error": max(errors, default=0.0),
            "lora_parameters": lora_parameters, "dense_parameters_approximated": dense_parameters,
            "adapter_parameters": adapter_parameters,
        },
        "modules": lora,
        "modules_to_save": sorted(save_modules),
        "bias_tensors": sorted(bias_keys),
        "tied": tied,
        "not_exported": not_exported,
    }
    return per_tensor, report


def load_adapter_model(folder, report: dict):
    """θ_B (as the report's model class, with the output folder's config: the fine-tune's labels) with the adapter
    in ``folder`` applied: ``PeftModel.from_pretrained``, ready for ``pipeline(...)``."""
    import transformers
    from peft import PeftModel

    folder = str(folder)
    lora = report["lora"]
    target = report["models"]["models.target"]
    base = lora.get("base_model_name_or_path") or target.get("repo_id") or target["path"]
    config = transformers.AutoConfig.from_pretrained(folder)
    kwargs = {}
    if target.get("repo_id") and base == target["repo_id"]:  # pinned to the commit θ_B resolved to
        kwargs = {k: v for k, v in (("revision", target.get("commit_hash")), ("subfolder", target.get("subfolder")))
                  if v}
    model = getattr(transformers, report["model_class"]).from_pretrained(base, config=config, **kwargs)
    return PeftModel.from_pretrained(model, folder).eval()
