"""The fast vote engine: per-sample gradient signs from one batched forward+backward per micro-batch.

How: no parameter gets a ``.grad``; instead each supported layer records its input in the forward pass and
its output gradient in the backward pass, and the per-sample gradients of its weights are formed from those
two (Opacus-style "grad samplers"), turned into signs and folded into the integer votes at once:

* ``nn.Linear`` / GPT-2 ``Conv1D``: Σ_t δ_{n,t} ⊗ a_{n,t} (one batched matmul, over the positions whose output
  gradient is not exactly 0: an LM head sees only the scored tokens),
* ``nn.Embedding``: per-sample rows, sparse: only rows a sample's tokens touch get a vote (and evidence),
  ``padding_idx`` excluded exactly as PyTorch's backward does,
* ``nn.LayerNorm``: Σ_t δ ⊙ x̂ and Σ_t δ,
* ``nn.Conv2d`` (patch embeddings): unfold + einsum,
* T5-family relative-position biases (an embedding looked up with [q, k] bucket ids, no batch dimension,
  then broadcast over the batch): the bias is expanded to one copy per sample, so its backward receives
  each sample's gradient, which is scattered back onto the buckets,
* any other module owning a voted parameter and taking one batched tensor (RMSNorm, T5LayerNorm, CLIP
  embeddings, ...): ``torch.func.vmap(grad(...))`` over that module alone,
* whatever is left: the exact one-sample loop, restricted to those parameters.

Parameters used by several modules (tied embeddings / LM head) sum their per-sample contributions before the
sign. Position embeddings looked up once for the whole batch ([1, T]) are expanded to [B, T] so each sample
gets its own gradient. Right padding with attention masks leaves a sample's gradient unchanged up to float
noise, so the result equals the reference loop except on coordinates whose gradient is within rounding of 0.

Why hooks rather than Opacus or ``torch.func`` on the whole model: Opacus materialises ``grad_sample`` for
every parameter of the batch at once (B copies of the gradient, which GradFix must never hold) and does not
sum tied weights' contributions per sample; ``vmap`` over a whole Hugging Face model fails on data-dependent
Python control flow in their forward passes. Hooks keep at most one chunk of one layer's per-sample gradients
alive (CHUNK_ELEMENTS values, or one sample of a larger tensor), in a buffer reused from chunk to chunk; a
large weight reached through a few positions (an LM head) is formed and folded in blocks of rows instead.

Where: the layer rules are in :mod:`.per_sample_rules`, the relative-position biases in :mod:`.relative_bias`,
the row-block fold of large low-rank weights in :mod:`.row_blocks`; this module holds what drives them: the
probe that classifies each hooked call, the forward recorder, the micro-batch loop and the exact fallback.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import GradFixError, NonFiniteError
from ..runtime.mesh import VoteMesh
from .fold import VoteFold, voted_parameters
from .per_sample_rules import add_embedding_rows, constant_options, per_sample, rule_applies
from .reference_engine import fold_one_at_a_time
from .relative_bias import RelativeBias, relative_bias_modules
from .row_blocks import fold_in_row_blocks, low_rank_uses
from .sharded_fold import ShardedVoteFold

CHUNK_ELEMENTS = 1 << 20  # per-sample gradients materialised at once (at least one sample): ~4 MB of fp32;
# with the fold's float and int8 sign buffers (~9 MB) it stays in cache while the fold re-reads it


class _Recorder:
    """Forward/backward hooks that turn each call of a hooked module into per-sample gradient factors."""

    def __init__(self, owners: dict[nn.Module, list[tuple[str, str]]]):
        self.owners = owners  # module -> [(param attribute, vote name)]
        self.calls: dict[nn.Module, list[tuple]] = defaultdict(list)  # probe: (input dim0, output dim0)
        self.batch = 0
        self.mode = "probe"
        self.classes: dict[tuple[int, int], str] = {}
        self.on_factor: Optional[Callable] = None
        self.per_pass: dict[int, int] = {}  # module id -> its calls in one forward (more: a checkpoint's recompute)
        self.handles = [m.register_forward_hook(self._forward, with_kwargs=True) for m in owners]
        self.enabled = True

    def use(self, classes: dict[tuple[int, int], str]) -> None:
        """Classify the calls of each micro-batch's forward as the probe found them."""
        self.classes = classes
        self.per_pass = {}
        for mid, index in classes:
            self.per_pass[mid] = max(self.per_pass.get(mid, 0), index + 1)

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _forward(self, module, args, kwargs, output):
        traceable = args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)
        if not self.enabled or not traceable:
            if self.mode == "probe" and self.enabled:
                self.calls[module].append(("untraceable",))
            return None
        x = args[0]
        index = len(self.calls[module])
        self.calls[module].append((x.shape[0] if x.dim() else -1, output.shape[0] if output.dim() else -1,
                                   len(args) == 1 and constant_options(kwargs)))
        if self.mode == "probe":
            return None
        passes = self.per_pass.get(id(module), 0)
        recomputed = passes and index >= passes  # activation checkpointing re-runs the block in the backward
        kind = self.classes.get((id(module), index % passes if passes else index), "unsupported")
        if kind == "unsupported":
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        if kind == "broadcast":
            output = output.expand(self.batch, *output.shape[1:])
        if recomputed:  # the same output as in the forward (checkpointing checks it); the factors came then
            return output
        saved = x.detach()
        output.register_hook(lambda grad, m=module, s=saved: self.on_factor(m, s if kind == "batched"
                                                                             else s.expand(self.batch, *s.shape[1:]),
                                                                             grad, dict(kwargs)))
        return output


def compute_votes_batched(model: nn.Module, objective, examples: Sequence[dict], parameter_names: Sequence[str], *,
                          aggregation: str = "majority", micro_batch_size: int = 16, progress: bool = True,
                          description: str = "votes", details: Optional[dict] = None,
                          sharded: Optional[Sharding] = None) -> tuple[dict, dict]:
    """Same contract as :func:`~gradfix_hf.votes.reference_engine.compute_votes`, from batched passes.

    ``objective`` provides ``collate(examples)``, ``batch_losses(model, batch) -> [B]`` and ``loss(model, ex)``.
    ``details``, if given, is filled with how each parameter was handled: ``rule`` (a layer rule),
    ``functional`` (torch.func on its module), ``broadcast`` (a [1, T] lookup expanded per sample) and
    ``exact_fallback`` (the one-sample loop).

    ``sharded``: a vote of an FSDP2-sharded ``model`` (:class:`Sharding`): ``examples`` are this process's, and the
    result is this process's rows of every tensor, summed over every process's samples.
    """
    params = voted_parameters(model, parameter_names, aggregation)
    if sharded is None:
        fold, probed = VoteFold(params, len(examples), aggregation), examples
        batches = _micro_batches(examples, micro_batch_size)
    else:  # the probe runs the padding micro-batch, the same on every process: every process classifies alike
        fold, probed = ShardedVoteFold(params, sharded.n_samples, aggregation, sharded.mesh), sharded.padding
        batches = sharded.micro_batches(examples, micro_batch_size)
    owners, tables = _owners(model, params)
    relative = RelativeBias(tables, fold)
    recorder = _Recorder(owners)
    try:
        classes, fallback = _probe(model, objective, probed, recorder, owners)
        if fallback and sharded is not None:
            raise GradFixError(f"a sharded vote forms every per-sample gradient from batched rules, but {fallback[:3]} "
                               f"{'need' if len(fallback) > 1 else 'needs'} the exact one-sample loop: vote without "
                               "sharding (vote_sharding: samples).")
        recorder.use(classes)
        if details is not None:
            details.update(_describe(classes, owners, fallback))
            details["relative_bias"] = sorted(name for _, name in tables.values())
        relative.active = True
        _run_batched(model, objective, batches, recorder, owners, fold, _contributions(classes, owners, fallback),
                     progress, description, relative, first=sharded.first if sharded else 0)
    finally:
        recorder.close()
        relative.close()
    if fallback:
        _exact_fallback(model, objective, examples, [params[n] for n in fallback], fallback, fold, progress)
    return fold.result()


@dataclass(frozen=True)
class Sharding:
    """A process's part in a sharded vote: the mesh, N (the votes' type), the micro-batches every process runs,
    the padding micro-batch (the same on every process) and the index of its first sample."""

    mesh: VoteMesh
    n_samples: int
    steps: int
    padding: Sequence[dict]
    first: int = 0  # the index of this process's first sample among all (errors name samples by it)

    def micro_batches(self, examples, size: int) -> list[tuple[list, bool]]:
        """This process's micro-batches, then padding ones (whose counts are discarded) up to ``steps``, so that
        every process takes part in every collective."""
        batches = _micro_batches(examples, size)
        if len(batches) > self.steps:
            raise ValueError(f"internal: {len(batches)} micro-batches for {self.steps} steps")
        return batches + [(list(self.padding), True)] * (self.steps - len(batches))


def _micro_batches(examples, size: int) -> list[tuple[list, bool]]:  # (micro-batch, is padding)
    return [(list(examples[start:start + size]), False) for start in range(0, len(examples), size)]


def _owners(model: nn.Module, params: dict) -> tuple[dict, dict]:
    """Which hooked module owns which voted parameter, and the relative-position bias tables among them."""
    wanted = {id(p): n for n, p in params.items()}
    bias_tables = relative_bias_modules(model)
    owners: dict[nn.Module, list[tuple[str, str]]] = defaultdict(list)
    tables: dict[nn.Module, tuple[nn.Module, str]] = {}
    shared = _shared_parameter_ids(model)
    for module in model.modules():
        for pname, p in module._parameters.items():
            if p is not None and id(p) in wanted:
                if module in bias_tables and pname == "weight" and id(p) not in shared:
                    tables[module] = (bias_tables[module], wanted[id(p)])
                else:
                    owners[module].append((pname, wanted[id(p)]))
    return owners, tables


def _contributions(classes, owners, fallback) -> dict[str, int]:
    """How many hooked calls contribute to each parameter's gradient in one micro-batch."""
    contributions = defaultdict(int)
    for (mid, _), kind in classes.items():
        if kind != "unsupported":
            for _, name in owners[_module_by_id(owners, mid)]:
                if name not in fallback:
                    contributions[name] += 1
    return contributions


def _describe(classes, owners, fallback) -> dict:
    out = {"rule": set(), "functional": set(), "broadcast": set(), "exact_fallback": set(fallback)}
    for (mid, _), kind in classes.items():
        module = _module_by_id(owners, mid)
        for _, name in owners[module]:
            if name in fallback:
                continue
            out["broadcast" if kind == "broadcast" else "rule" if rule_applies(module) else "functional"].add(name)
    return {k: sorted(v) for k, v in out.items()}


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _on_device(batch, device):
    """A collated batch or an example with its tensors on the model's device."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _module_by_id(owners, mid):
    return next(m for m in owners if id(m) == mid)


@torch.no_grad()
def _probe(model, objective, examples, recorder, owners) -> tuple[dict, list[str]]:
    """Classify every hooked module call: per-sample ('batched'), once per batch ('broadcast') or neither.

    Two no-grad forwards, of 1 and 2 samples (3 samples' work: about a tenth of a micro-batch of 32): a call
    is 'batched' if its leading dimension follows the batch (1, then 2), 'broadcast' if it stays 1, and
    anything else (e.g. a constant leading dimension of 2) cannot match both sizes."""
    sizes = [b for b in (1, 2) if b <= len(examples)]
    seen: list[dict] = []
    for size in sizes:
        recorder.calls.clear()
        recorder.mode = "probe"
        objective.batch_losses(model, _on_device(objective.collate(list(examples[:size])), _device(model)))
        seen.append({m: list(c) for m, c in recorder.calls.items()})
    classes: dict[tuple[int, int], str] = {}
    bad_modules = set()
    for module in owners:
        runs = [s.get(module, []) for s in seen]
        if not any(runs):
            continue  # never called (e.g. the `shared` embedding whose weight the encoder/decoder reuse)
        if any(len(r) != len(runs[0]) for r in runs):
            bad_modules.add(module)
            continue
        for index in range(len(runs[0])):
            calls = [r[index] for r in runs]
            single_input = all(len(c) == 3 and c[2] for c in calls)
            rule = rule_applies(module)
            if not (rule or single_input):
                kind = "unsupported"
            elif all(c[0] == size and c[1] == size for c, size in zip(calls, sizes)):
                kind = "batched"
            elif all(c[0] == 1 and c[1] == 1 for c in calls) and isinstance(module, nn.Embedding) and sizes[-1] > 1:
                kind = "broadcast"
            else:
                kind = "unsupported"
            classes[(id(module), index)] = kind
            if kind == "unsupported":
                bad_modules.add(module)
    fallback = sorted({name for m in bad_modules for _, name in owners[m]})
    for module in bad_modules:  # a parameter with any unsupported use goes wholly to the exact fallback
        for key in [k for k in classes if k[0] == id(module)]:
            classes[key] = "unsupported"
    return classes, fallback


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters owned by more than one module (tied weights): they need the general summing path."""
    seen, shared = set(), set()
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                (shared if id(p) in seen else seen).add(id(p))
    return shared


def _run_batched(model, objective, batches, recorder, owners, fold, contributions, progress, description,
                 relative=None, first: int = 0):
    pending: dict[str, list] = defaultdict(list)

    def on_factor(module, x, grad, options=None):
        if rule_applies(module) and grad.dtype != torch.float32:  # a bf16/fp16 vote: the rules form per-sample
            x = x.float() if x.is_floating_point() else x  # gradients from float32 copies of the layer's factors
            grad = grad.float()
        for pname, name in owners[module]:
            if contributions.get(name, 0) == 0:
                continue
            pending[name].append((module, pname, x, grad.detach(), options))
            if len(pending[name]) == contributions[name]:
                recorder.enabled = False  # the torch.func path calls the module again: not a model call
                try:
                    _fold_factors(name, pending.pop(name), fold)
                finally:
                    recorder.enabled = True
                fold.flush(name)

    recorder.on_factor = on_factor
    recorder.mode = "run"
    bar = tqdm(total=sum(len(c) for c, padding in batches if not padding), desc=description, disable=not progress,
               unit="sample")
    start = first
    for chunk, padding in batches:
        recorder.calls.clear()
        recorder.batch = len(chunk)
        fold.discard = padding
        if relative is not None:
            relative.batch = len(chunk)
        losses = objective.batch_losses(model, _on_device(objective.collate(chunk), _device(model)))
        failure = None
        if not padding and not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).nonzero()[0]) + start
            failure = f"sample {bad}: the loss on the target is NaN/inf."
        failure = fold.shared_failure(failure)
        if failure:
            raise NonFiniteError(failure)
        if losses.requires_grad:
            losses.sum().backward()
        if pending:
            raise RuntimeError(f"internal: gradients of {sorted(pending)[:3]} did not all arrive")
        fold.end_batch()
        if not padding:
            start += len(chunk)
            bar.update(len(chunk))
    fold.discard = False
    bar.close()


def _fold_factors(name: str, factors: list, fold: VoteFold) -> None:
    """Per-sample gradients of one parameter from all its uses in this micro-batch, folded in chunks."""
    batch = factors[0][2].shape[0]
    if len(factors) == 1 and isinstance(factors[0][0], nn.Embedding):
        module, _, ids, grad, _ = factors[0]
        ids = ids.reshape(batch, -1)
        grad = grad.reshape(batch, -1, module.embedding_dim)
        keep = ids != module.padding_idx if module.padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
        sample = torch.arange(batch, device=ids.device).unsqueeze(1).expand_as(ids)
        keys = (sample * module.num_embeddings + ids)[keep]
        unique, inverse = torch.unique(keys, return_inverse=True)
        rows = torch.zeros(len(unique), module.embedding_dim, dtype=torch.float32, device=grad.device)
        rows.index_add_(0, inverse, grad[keep].float())
        fold.rows(name, unique % module.num_embeddings, rows, unique // module.num_embeddings)
        return
    numel = factors[0][0]._parameters[factors[0][1]].numel()
    step = max(1, CHUNK_ELEMENTS // max(numel, 1))
    # dense uses first; an embedding's sparse rows are then added in place (a tied LM head never materialises
    # a second dense [c, vocab, dim] tensor per chunk)
    ordered = sorted(factors, key=lambda f: isinstance(f[0], nn.Embedding))
    in_row_blocks = numel > CHUNK_ELEMENTS and low_rank_uses(ordered)
    for lo in range(0, batch, step):
        rows = slice(lo, min(batch, lo + step))
        if in_row_blocks:
            fold_in_row_blocks(name, ordered, rows, fold)
            continue
        total = None
        for module, pname, x, grad, options in ordered:
            if total is not None and isinstance(module, nn.Embedding):
                add_embedding_rows(total, module, x, grad, rows)
                continue
            out = None
            if total is None and grad.dtype == torch.float32:  # the first part may live in the reused buffer
                out = lambda shape, d=grad.device: fold.scratch.take(  # noqa: E731
                    "per_sample", shape, torch.float32, d)
            part = per_sample(module, pname, x, grad, rows, options, out)
            total = part.float() if total is None else total.add_(part)
        fold.dense(name, total)


def _exact_fallback(model, objective, examples, tensors, names, fold, progress) -> None:
    """One sample at a time, for the parameters no batched rule can split per sample."""
    device = _device(model)
    fold_one_at_a_time(model, lambda m, example: objective.loss(m, _on_device(example, device)), examples,
                       dict(zip(names, tensors)), fold, progress=progress, description="votes (exact fallback)")
