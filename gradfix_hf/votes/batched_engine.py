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
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import NonFiniteError
from .fold import FOLD_PIECE, VoteFold, limits_from_extremes, voted_parameters
from .reference_engine import fold_one_at_a_time

try:  # GPT-2 style Conv1D (weight stored as [in, out])
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

LOW_RANK = 4  # a large weight reached through at most this many positions per sample is folded in row blocks
CHUNK_ELEMENTS = 1 << 20  # per-sample gradients materialised at once (at least one sample): ~4 MB of fp32;
# with the fold's float and int8 sign buffers (~9 MB) it stays in cache while the fold re-reads it


def _flat(x: torch.Tensor, batch: int, last: int) -> torch.Tensor:
    return x.reshape(batch, -1, last)


def _per_sample(module: nn.Module, pname: str, x: torch.Tensor, g: torch.Tensor, rows: slice,
                options: Optional[dict] = None, out: Optional[Callable] = None) -> torch.Tensor:
    """Dense per-sample gradient [c, *param.shape] of ``module.<pname>`` for samples ``rows`` (``options``: the
    call's constant keyword arguments, for the torch.func path; ``out(shape)``: a reusable buffer for the
    weight gradients of linear layers)."""
    b = x.shape[0]
    if _is_linear(module):
        if pname == "bias":
            return _flat(g, b, g.shape[-1])[rows].sum(1)
        left, right = _linear_operands(module, x, g, rows)
        shape = (left.shape[0], left.shape[1], right.shape[2])
        return torch.bmm(left, right, out=out(shape) if out else None)
    if isinstance(module, nn.LayerNorm):
        shape = module.normalized_shape
        gf = g.reshape(b, -1, *shape)[rows]
        if pname == "bias":
            return gf.sum(1)
        xhat = F.layer_norm(x[rows].float(), shape, eps=module.eps).reshape(gf.shape)
        return (gf * xhat).sum(1)
    if isinstance(module, nn.Embedding):
        out = torch.zeros(x[rows].shape[0], module.num_embeddings, module.embedding_dim, dtype=g.dtype,
                          device=g.device)
        _add_embedding_rows(out, module, x, g, rows)
        return out
    if isinstance(module, nn.Conv2d):
        gf = g[rows]
        if pname == "bias":
            return gf.sum((2, 3))
        cols = F.unfold(x[rows].to(gf.dtype), module.kernel_size, module.dilation, module.padding, module.stride)
        grad = torch.einsum("bol,bil->boi", gf.flatten(2), cols)
        return grad.reshape(gf.shape[0], *module.weight.shape)
    return _functional_per_sample(module, pname, x[rows], g[rows], options)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or bool(Conv1D and isinstance(module, Conv1D))


def _linear_operands(module: nn.Module, x: torch.Tensor, g: torch.Tensor, rows: slice
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(left [c, weight rows, K], right [c, K, weight columns]) with left @ right = the per-sample weight
    gradients Σ_t δ_t ⊗ a_t of samples ``rows``, over their K active positions."""
    b = x.shape[0]
    conv1d = not isinstance(module, nn.Linear)  # GPT-2's Conv1D stores its weight as [in, out]
    n_in, n_out = (module.weight.shape[0], module.nf) if conv1d else (module.in_features, module.out_features)
    gf = _flat(g, b, n_out)[rows]
    gf, xf = _active_positions(gf, _flat(x, b, n_in)[rows].to(gf.dtype))
    left, right = (xf, gf) if conv1d else (gf, xf)
    return left.transpose(1, 2), right


def _active_positions(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the positions where a sample's output gradient is exactly 0 from Σ_t g_t ⊗ x_t ([c, T, ·] each).

    Most positions carry no gradient into an LM head (only the scored tokens do), nor into a classifier's last
    layer (only [CLS]); skipping them makes those per-sample products up to T× cheaper. The sum is unchanged:
    the skipped terms are exact zeros. Each sample keeps its own active positions (gathered to the front), the
    rest of the max-count slots are filled with inactive positions, whose terms are 0.
    """
    positions = g.shape[1]
    if positions <= 2:
        return g, x
    active = _active(g)
    keep = int(active.sum(1).max())
    if keep > positions // 2:
        return g, x
    order = torch.argsort(active.to(torch.uint8), dim=1, descending=True, stable=True)[:, :keep].unsqueeze(-1)
    return g.gather(1, order.expand(-1, -1, g.shape[2])), x.gather(1, order.expand(-1, -1, x.shape[2]))


def _active(g: torch.Tensor) -> torch.Tensor:
    """[c, T] bool: the positions of ``g`` [c, T, ·] whose output gradient is not exactly 0 (two vectorised
    reductions: faster than ``ne(0).any(-1)``)."""
    return g.amax(-1).ne(0) | g.amin(-1).ne(0)


def _functional_per_sample(module: nn.Module, pname: str, x: torch.Tensor, g: torch.Tensor,
                           options: Optional[dict] = None) -> torch.Tensor:
    """Exact per-sample gradient of any single-input module via ``torch.func`` on that module alone."""
    from torch.func import functional_call, grad, vmap

    def inner(value, x_n, g_n):
        out = functional_call(module, {pname: value}, (x_n.unsqueeze(0),), options or {})
        return (out * g_n.unsqueeze(0)).sum()

    return vmap(grad(inner), in_dims=(None, 0, 0))(getattr(module, pname).detach(), x, g)


RULE_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv2d) + ((Conv1D,) if Conv1D else ())


def _constant_options(kwargs: dict) -> bool:
    """Keyword arguments that are plain constants (e.g. CLIP's ``interpolate_pos_encoding=False``): a call with
    them still has one batched input, and the torch.func path can repeat it without side effects."""
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in kwargs.values())


def _rule_applies(module: nn.Module) -> bool:
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return isinstance(module, RULE_TYPES)


class _PerSampleCopies(torch.autograd.Function):
    """Identity that gives every sample its own copy of a batch-shared tensor ([1, ...] → [B, ...]); its
    backward hands the per-sample gradients to ``callback`` and returns their sum (what broadcasting gives)."""

    @staticmethod
    def forward(ctx, shared, batch, callback):
        ctx.callback = callback
        return shared.expand(batch, *shared.shape[1:]).clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.callback(grad)
        return grad.sum(0, keepdim=True), None, None


def relative_bias_modules(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """T5-family attention modules with a relative-position bias: their bias embedding → the module."""
    found = {}
    for module in model.modules():
        table = getattr(module, "relative_attention_bias", None)
        if isinstance(table, nn.Embedding) and callable(getattr(module, "compute_bias", None)):
            found[table] = module
    return found


class _RelativeBias:
    """Per-sample votes of T5 relative-position bias tables without the one-sample loop.

    ``compute_bias`` returns a [1, heads, q, k] bias shared by the batch (and by every layer of the stack).
    During the vote it is wrapped so that each sample gets its own copy; the copy's backward then holds
    ∂ℓ_n/∂bias_n summed over the layers that used it, and the gradient of the table row of bucket b is the
    sum over the (q, k) positions in bucket b, per sample (a scatter-add).
    """

    def __init__(self, tables: dict[nn.Module, tuple[nn.Module, str]], fold: "VoteFold"):
        self.tables = tables  # embedding → (attention module, vote name)
        self.fold = fold
        self.batch = 0
        self.active = False
        self.buckets: dict[nn.Module, torch.Tensor] = {}
        self.handles = [table.register_forward_hook(self._capture) for table in tables]
        self.originals = {}
        for table, (attention, name) in tables.items():
            self.originals[attention] = attention.compute_bias
            attention.compute_bias = self._wrap(attention, table, name)

    def _capture(self, table, args, output):
        self.buckets[table] = args[0].detach()

    def _wrap(self, attention, table, name):
        original = attention.compute_bias

        def compute_bias(*args, **kwargs):
            bias = original(*args, **kwargs)
            if not self.active or not torch.is_grad_enabled():
                return bias
            buckets = self.buckets.pop(table)
            return _PerSampleCopies.apply(bias.detach().requires_grad_(True), self.batch,
                                          lambda grad: self._fold(table, name, buckets, grad))

        return compute_bias

    def _fold(self, table: nn.Module, name: str, buckets: torch.Tensor, grad: torch.Tensor) -> None:
        batch, heads = grad.shape[0], grad.shape[1]
        per_position = grad.permute(0, 2, 3, 1).reshape(batch, -1, heads).float()  # [B, q·k, heads]
        per_sample = torch.zeros(batch, table.num_embeddings, heads, dtype=torch.float32, device=grad.device)
        per_sample.index_add_(1, buckets.reshape(-1), per_position)
        self.fold.dense(name, per_sample)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for attention in self.originals:
            del attention.compute_bias  # back to the class's method


class _Recorder:
    """Forward/backward hooks that turn each call of a hooked module into per-sample gradient factors."""

    def __init__(self, owners: dict[nn.Module, list[tuple[str, str]]]):
        self.owners = owners  # module -> [(param attribute, vote name)]
        self.calls: dict[nn.Module, list[tuple]] = defaultdict(list)  # probe: (input dim0, output dim0)
        self.batch = 0
        self.mode = "probe"
        self.classes: dict[tuple[int, int], str] = {}
        self.on_factor: Optional[Callable] = None
        self.handles = [m.register_forward_hook(self._forward, with_kwargs=True) for m in owners]
        self.enabled = True

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
                                   len(args) == 1 and _constant_options(kwargs)))
        if self.mode == "probe":
            return None
        kind = self.classes.get((id(module), index), "unsupported")
        if kind == "unsupported":
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        if kind == "broadcast":
            output = output.expand(self.batch, *output.shape[1:])
        saved = x.detach()
        output.register_hook(lambda grad, m=module, s=saved: self.on_factor(m, s if kind == "batched"
                                                                             else s.expand(self.batch, *s.shape[1:]),
                                                                             grad, dict(kwargs)))
        return output


def compute_votes_batched(model: nn.Module, objective, examples: Sequence[dict], parameter_names: Sequence[str], *,
                          aggregation: str = "majority", micro_batch_size: int = 16, progress: bool = True,
                          description: str = "votes", details: Optional[dict] = None) -> tuple[dict, dict]:
    """Same contract as :func:`~gradfix_hf.votes.reference_engine.compute_votes`, from batched passes.

    ``objective`` provides ``collate(examples)``, ``batch_losses(model, batch) -> [B]`` and ``loss(model, ex)``.
    ``details``, if given, is filled with how each parameter was handled: ``rule`` (a layer rule),
    ``functional`` (torch.func on its module), ``broadcast`` (a [1, T] lookup expanded per sample) and
    ``exact_fallback`` (the one-sample loop).
    """
    params = voted_parameters(model, parameter_names, aggregation)
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
    fold = VoteFold(params, len(examples), aggregation)
    relative = _RelativeBias(tables, fold)
    recorder = _Recorder(owners)
    try:
        classes, fallback = _probe(model, objective, examples, recorder, owners)
        recorder.classes = classes
        contributions = defaultdict(int)
        for (mid, _), kind in classes.items():
            if kind != "unsupported":
                for _, name in owners[_module_by_id(owners, mid)]:
                    if name not in fallback:
                        contributions[name] += 1
        if details is not None:
            details.update(_describe(classes, owners, fallback))
            details["relative_bias"] = sorted(name for _, name in tables.values())
        relative.active = True
        _run_batched(model, objective, examples, recorder, owners, fold, contributions, micro_batch_size,
                     progress, description, relative)
    finally:
        recorder.close()
        relative.close()
    if fallback:
        _exact_fallback(model, objective, examples, [params[n] for n in fallback], fallback, fold, progress)
    return fold.result()


def _describe(classes, owners, fallback) -> dict:
    out = {"rule": set(), "functional": set(), "broadcast": set(), "exact_fallback": set(fallback)}
    for (mid, _), kind in classes.items():
        module = _module_by_id(owners, mid)
        for _, name in owners[module]:
            if name in fallback:
                continue
            out["broadcast" if kind == "broadcast" else "rule" if _rule_applies(module) else "functional"].add(name)
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
            rule = _rule_applies(module)
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


def _run_batched(model, objective, examples, recorder, owners, fold, contributions, micro_batch_size, progress,
                 description, relative=None):
    pending: dict[str, list] = defaultdict(list)

    def on_factor(module, x, grad, options=None):
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

    recorder.on_factor = on_factor
    recorder.mode = "run"
    bar = tqdm(total=len(examples), desc=description, disable=not progress, unit="sample")
    for start in range(0, len(examples), micro_batch_size):
        chunk = list(examples[start:start + micro_batch_size])
        recorder.calls.clear()
        recorder.batch = len(chunk)
        if relative is not None:
            relative.batch = len(chunk)
        losses = objective.batch_losses(model, _on_device(objective.collate(chunk), _device(model)))
        if not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).nonzero()[0]) + start
            raise NonFiniteError(f"sample {bad}: the loss on the target is NaN/inf.")
        if losses.requires_grad:
            losses.sum().backward()
        if pending:
            raise RuntimeError(f"internal: gradients of {sorted(pending)[:3]} did not all arrive")
        bar.update(len(chunk))
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
    in_row_blocks = numel > CHUNK_ELEMENTS and _low_rank_uses(ordered)
    for lo in range(0, batch, step):
        rows = slice(lo, min(batch, lo + step))
        if in_row_blocks:
            _fold_in_row_blocks(name, ordered, rows, fold)
            continue
        total = None
        for module, pname, x, grad, options in ordered:
            if total is not None and isinstance(module, nn.Embedding):
                _add_embedding_rows(total, module, x, grad, rows)
                continue
            out = None
            if total is None and grad.dtype == torch.float32:  # the first part may live in the reused buffer
                out = lambda shape, d=grad.device: fold.scratch.take("per_sample", shape, torch.float32, d)  # noqa: E731
            part = _per_sample(module, pname, x, grad, rows, options, out)
            total = part.float() if total is None else total.add_(part)
        fold.dense(name, total)


def _low_rank_uses(ordered: list) -> bool:
    """Whether a parameter's uses in this micro-batch are fp32 linear weights that every sample reaches through
    at most ``LOW_RANK`` positions (an LM head: the scored tokens), plus any embedding lookups (tied rows)."""
    linear = False
    for module, pname, x, grad, _ in ordered:
        if isinstance(module, nn.Embedding):
            continue
        if not (_is_linear(module) and pname == "weight" and grad.dtype == torch.float32):
            return False
        g = _flat(grad, grad.shape[0], grad.shape[-1])
        if g.shape[1] > LOW_RANK and int(_active(g).sum(1).max()) > LOW_RANK:
            return False
        linear = True
    return linear


def _fold_in_row_blocks(name: str, ordered: list, rows: slice, fold: VoteFold) -> None:
    """Fold one sample's gradient of a large weight whose uses qualify for :func:`_low_rank_uses`, without
    materialising it.

    The gradient is formed in blocks of weight rows that stay in cache, twice: once for the sample's largest
    and smallest entry (its noise limit), once to fold each block at that limit. Forming a rank-K block
    costs K multiply-adds per entry, less than writing the whole tensor (150 MB for GPT-2's) to memory and
    streaming it back for each pass of the fold.
    """
    outer, lookups = [], []
    for module, pname, x, grad, _ in ordered:
        if isinstance(module, nn.Embedding):
            ids = x[rows].reshape(-1)
            g = grad[rows].reshape(-1, module.embedding_dim).float()
            if module.padding_idx is not None:
                keep = ids != module.padding_idx
                ids, g = ids[keep], g[keep]
            lookups.append((ids, g))
        else:
            outer.append(_linear_operands(module, x, grad, rows))
    n_rows, width = outer[0][0].shape[1], outer[0][1].shape[2]
    step = max(1, FOLD_PIECE // width)

    def block(r0: int) -> torch.Tensor:
        r1 = min(n_rows, r0 + step)
        out = fold.scratch.take("per_sample", (1, r1 - r0, width), torch.float32, outer[0][0].device)
        torch.bmm(outer[0][0][:, r0:r1], outer[0][1], out=out)
        for left, right in outer[1:]:
            out.baddbmm_(left[:, r0:r1], right)
        for ids, g in lookups:
            inside = (ids >= r0) & (ids < r1)
            out[0].index_add_(0, ids[inside] - r0, g[inside])
        return out.view(1, -1)

    largest = smallest = None
    for r0 in range(0, n_rows, step):
        values = block(r0)
        high, low = values.amax(1), values.amin(1)
        largest = high if largest is None else torch.maximum(largest, high)
        smallest = low if smallest is None else torch.minimum(smallest, low)
    limit = fold.checked_limits(name, limits_from_extremes(largest, smallest))
    for r0 in range(0, n_rows, step):
        fold.dense_columns(name, block(r0), limit, start=r0 * width)


def _add_embedding_rows(total: torch.Tensor, module: nn.Embedding, x: torch.Tensor, g: torch.Tensor,
                        rows: slice) -> None:
    """total[c, vocab, dim] += the per-sample embedding gradient (rows of the tokens each sample contains)."""
    ids = x[rows].reshape(x[rows].shape[0], -1)
    gf = g[rows].reshape(ids.shape[0], -1, module.embedding_dim).to(total.dtype)
    if module.padding_idx is not None:
        gf = gf * (ids != module.padding_idx).unsqueeze(-1)
    total.scatter_add_(1, ids.unsqueeze(-1).expand_as(gf), gf)


def _exact_fallback(model, objective, examples, tensors, names, fold, progress) -> None:
    """One sample at a time, for the parameters no batched rule can split per sample."""
    device = _device(model)
    fold_one_at_a_time(model, lambda m, example: objective.loss(m, _on_device(example, device)), examples,
                       dict(zip(names, tensors)), fold, progress=progress, description="votes (exact fallback)")
