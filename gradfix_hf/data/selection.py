"""Which K samples of a class vote: herding, k-medoids (PAM) and greedy k-center on the target's embeddings.

``data.selection: random`` (the default) draws K rows per class with ``data.seed`` and never loads a model
(:func:`gradfix_hf.data.select_per_class`). The other methods first draw a *pool* of at most
``data.selection_pool`` rows per class (all rows of a smaller class) with the same seed, embed the pool with
θ_B as the votes see it (:func:`embed_rows`), and choose K rows per class on those embeddings with one of the
pure functions below. Given the pool, every algorithm is deterministic (ties go to the lowest pool index),
so a selection depends only on the data, ``data.seed``, ``data.selection_pool`` and θ_B.

Geometry: embeddings are L2-normalised (as the authors' code normalises its CLIP image features) and
distances are Euclidean on the unit sphere, ‖a − b‖ = sqrt(2 − 2·cos(a, b)). They order pairs exactly as
cosine distance does, but unlike cosine distance they satisfy the triangle inequality, which the greedy
k-center's factor-2 guarantee and the k-medoids objective as a metric clustering rely on.

The authors' "coreset" (``dataset_sampler.py``) starts from the medoid and then adds the candidate with the
*smallest* distance to the chosen set: the medoid's nearest neighbours, a tight clump. ``k-center`` (also
accepted as ``coreset``) adds the *farthest* candidate (Sener & Savarese, 2018), which covers the class.
Their "k-medoid" is MiniBatchKMeans followed by the nearest sample to each centroid; ``k-medoids`` here is
PAM (BUILD, then SWAP until no swap lowers the objective).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError, RecipeError
from ..objectives import CallableObjective
from ..plan import TransportPlan, load_base_model
from ..runtime import on_main_process, process_context

#: ``embed(rows, labels) -> [n, d]`` float tensor: what :func:`gradfix_hf.data.select_per_class` calls on a pool
Embedder = Callable[[list, list], torch.Tensor]


def _check(embeddings: torch.Tensor, k: int, where: str) -> torch.Tensor:
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise DataError(f"{where}: expected a non-empty [n, d] embedding matrix, got shape {tuple(embeddings.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"{where}: the number of samples to choose must be a positive integer, got {k!r}.")
    if k > embeddings.shape[0]:
        raise DataError(f"{where}: asks for {k} samples but only {embeddings.shape[0]} are available.")
    values = embeddings.detach().to(torch.float64)
    if not torch.isfinite(values).all():
        raise DataError(f"{where}: the embeddings hold NaN or inf values.")
    return values


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [n, n] in float64, with an exact zero diagonal and no negative rounding."""
    values = embeddings.detach().to(torch.float64)
    distances = torch.cdist(values, values).clamp_(min=0.0)
    distances.fill_diagonal_(0.0)
    return distances


def herding(embeddings: torch.Tensor, k: int, *, where: str = "herding") -> list[int]:
    """Kernel herding / greedy moment matching (Welling 2009; iCaRL's exemplar selection).

    Step t picks, among the rows not chosen yet, the one that brings the mean of the t chosen rows closest
    to the mean of all rows: argmin_i ‖μ − (s + x_i)/t‖, with s the sum of the rows chosen before. The
    first pick is therefore the row nearest the mean. Returns row indices in the order picked.
    """
    x = _check(embeddings, k, where)
    mean = x.mean(0)
    squared = (x * x).sum(1)
    total = torch.zeros_like(mean)
    taken = torch.zeros(x.shape[0], dtype=torch.bool)
    chosen: list[int] = []
    for t in range(1, k + 1):
        # ‖(s + x_i)/t − μ‖ = ‖x_i − (t·μ − s)‖ / t: one matrix-vector product per step
        aim = t * mean - total
        gaps = squared - 2 * (x @ aim)
        gaps[taken] = float("inf")
        pick = int(torch.argmin(gaps))  # the first minimum: ties go to the lowest index
        chosen.append(pick)
        taken[pick] = True
        total += x[pick]
    return chosen


def k_center(embeddings: torch.Tensor, k: int, *, where: str = "k-center") -> list[int]:
    """Greedy k-center coreset (Gonzalez 1985; Sener & Savarese 2018).

    Starts from the row nearest the mean of all rows (deterministic, no seed needed; the factor-2 bound
    holds from any start), then repeatedly adds the row farthest from the chosen set. Its covering radius
    max_i min_c ‖x_i − x_c‖ is at most twice the optimum over all k-subsets.
    """
    x = _check(embeddings, k, where)
    first = int(torch.argmin((x - x.mean(0)).norm(dim=1)))
    chosen = [first]
    nearest = (x - x[first]).norm(dim=1)
    taken = torch.zeros(x.shape[0], dtype=torch.bool)
    taken[first] = True
    while len(chosen) < k:
        reach = nearest.masked_fill(taken, -1.0)  # duplicates at distance 0 are still eligible, chosen ones not
        pick = int(torch.argmax(reach))
        chosen.append(pick)
        taken[pick] = True
        nearest = torch.minimum(nearest, (x - x[pick]).norm(dim=1))
    return chosen


def k_medoids_cost(distances: torch.Tensor, medoids: Sequence[int]) -> float:
    """The k-medoids objective: Σ_i min_{m ∈ medoids} d(i, m)."""
    return float(distances[:, list(medoids)].min(dim=1).values.sum())


def k_medoids(embeddings: torch.Tensor, k: int, *, max_swaps: int = 10_000, where: str = "k-medoids") -> list[int]:
    """k-medoids by PAM (Kaufman & Rousseeuw 1990): BUILD, then SWAP until no single swap lowers the cost.

    BUILD takes the row with the least total distance to all rows, then repeatedly the row whose addition
    lowers Σ_i min_m d(i, m) the most. SWAP evaluates every (medoid, non-medoid) exchange and applies the
    best one while it lowers the cost (by more than float64 rounding), so the result is a local optimum:
    no single swap improves it. Distances are Euclidean on the given rows (see the module docstring).
    """
    x = _check(embeddings, k, where)
    d = pairwise_distances(x)
    n = d.shape[0]
    medoids = [int(torch.argmin(d.sum(dim=1)))]
    nearest = d[medoids[0]].clone()
    while len(medoids) < k:
        gains = (nearest[:, None] - d).clamp(min=0.0).sum(dim=0)
        gains[medoids] = -1.0
        pick = int(torch.argmax(gains))
        medoids.append(pick)
        nearest = torch.minimum(nearest, d[pick])
    is_medoid = torch.zeros(n, dtype=torch.bool)
    is_medoid[medoids] = True
    beyond = float(d.max()) + 1.0  # "no second medoid" when k = 1: farther than any row
    cost = k_medoids_cost(d, medoids)
    for _ in range(max_swaps):
        closest = d[:, medoids].topk(min(2, k), dim=1, largest=False)
        first, owner = closest.values[:, 0], closest.indices[:, 0]
        second = closest.values[:, 1] if k > 1 else torch.full_like(first, beyond)
        # change of the cost when medoid slot m is swapped for row o, for every (o, m) at once (FastPAM1,
        # Schubert & Rousseeuw 2019): rows leaving m fall back to their second medoid, every row may move to o
        ownership = torch.nn.functional.one_hot(owner, k).to(d.dtype)
        removal = (second - first) @ ownership
        moved = (d - first).clamp(max=0.0).sum(dim=1)
        fallback = (torch.minimum(torch.maximum(d, first), second) - second) @ ownership
        change = removal[None, :] + moved[:, None] + fallback
        change[is_medoid] = float("inf")
        flat = int(torch.argmin(change))
        candidate, slot = divmod(flat, k)
        trial = list(medoids)
        trial[slot] = candidate
        new_cost = k_medoids_cost(d, trial)  # checked directly, so rounding in ``change`` cannot cycle
        if not new_cost < cost - 1e-12 * max(cost, 1.0):
            return medoids
        is_medoid[medoids[slot]] = False
        is_medoid[candidate] = True
        medoids, cost = trial, new_cost
    raise DataError(f"{where}: SWAP did not converge in {max_swaps} swaps.")  # each swap lowers the cost


#: selection name → algorithm on an embedding matrix (``random`` needs none)
ALGORITHMS: dict[str, Callable[..., list[int]]] = {"herding": herding, "k-medoids": k_medoids, "k-center": k_center}


def _pooled_hidden_states(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean of the last hidden states over each row's input tokens: [B, hidden] (images: the image features).

    Input tokens are those the attention mask covers, minus the completion of a causal-LM example (its
    ``labels`` mark the label word, which is the same for a whole class and says nothing about the input).
    An encoder-decoder is run through its encoder only; other models through their backbone
    (``model.base_model``), so no head or vocabulary projection is computed.
    """
    labels = batch.get("labels")
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    if "input_ids" not in inputs and "pixel_values" in inputs and hasattr(model, "get_image_features"):
        features = model.get_image_features(pixel_values=inputs["pixel_values"])  # CLIP: what the logits use
        return getattr(features, "pooler_output", features)
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    if getattr(model.config, "is_encoder_decoder", False):
        hidden = model.get_encoder()(**inputs).last_hidden_state
    else:
        if labels is not None and labels.shape == mask.shape:
            mask = mask * (labels == -100)
        backbone = getattr(model, "base_model", model)
        if backbone is not model:
            hidden = backbone(**inputs).last_hidden_state
        else:
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@torch.no_grad()
def embed_rows(model: torch.nn.Module, objective: Any, rows: Sequence[dict], labels: Sequence[int], *,
               batch_size: int = 16, device: Optional[torch.device] = None) -> torch.Tensor:
    """L2-normalised embeddings [n, hidden] of ``rows`` under ``model`` (θ_B as the votes see it), in float32.

    Rows go through the objective's own ``encode``/``collate``, so they are tokenised exactly as for the
    votes. The embedding is the attention-masked mean of the last hidden states over the input tokens
    (encoder states for seq2seq, prompt tokens for causal LM): unlike a [CLS]/pooler output or the last
    token, it exists in the same form for every architecture and objective, and a copied classification
    head (not voted) does not shape it. Images (``pixel_values`` into a model with ``get_image_features``,
    e.g. CLIP) are embedded by the projected image features, as the authors' code does. An objective can
    supply its own ``embed(model, batch)`` instead; its output is normalised the same way.
    """
    if len(rows) != len(labels):
        raise ValueError(f"embed_rows: {len(rows)} rows but {len(labels)} labels")
    own = getattr(objective, "embed", None)
    parts = []
    for start in range(0, len(rows), batch_size):
        examples = [objective.encode(row, label) for row, label in
                    zip(rows[start:start + batch_size], labels[start:start + batch_size])]
        batch = objective.collate(examples)
        if device is not None:
            batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                     for key, value in batch.items()}
        pooled = own(model, batch) if callable(own) else _pooled_hidden_states(model, batch)
        parts.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(parts)


def target_embedder(plan: TransportPlan, objective: Any, *, batch_size: int = 16,
                    where: str = "data.selection") -> Embedder:
    """``embed(rows, labels)`` on θ_B with the fine-tune's copied head (loaded on the first call, then freed).

    Under a launcher with several processes the main process embeds (on its device) and shares the result,
    so every process chooses the same samples for its shard of the votes.
    """
    if isinstance(objective, CallableObjective):
        raise RecipeError(f"{where}: choosing samples on embeddings needs a built-in objective's inputs; a "
                          "'callable' objective's loss is opaque, use selection 'random'.")

    def embed(rows: list, labels: list) -> torch.Tensor:
        context = process_context()

        def work() -> torch.Tensor:
            model = load_base_model(plan)
            device = context.device if context.distributed else None
            if device is not None:
                model.to(device)
            return embed_rows(model, objective, rows, labels, batch_size=batch_size, device=device)

        return context.broadcast_object(on_main_process(context, work))

    return embed
