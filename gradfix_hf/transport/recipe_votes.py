"""Stage 1 for a recipe: every task's votes, from its votes file, from the ``votes_cache`` or computed on θ_B.

``compute_recipe_votes`` is what ``gradfix votes`` calls; ``recipe_votes`` gives every task of a run its votes,
computing each distinct vote (same :func:`vote_key`) once, on every process of a launch.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import RecipeError, VotesFileError
from ..hub import local_path
from ..objectives import Objective
from ..plan import SOURCE_FT, TARGET, load_base_model
from ..plan.checkpointing import checkpoint_blocks
from ..plan.sharded_model import load_sharded_base_model
from ..recipe import Recipe
from ..runtime import ProcessContext, on_main_process, process_context
from ..runtime.allocator import return_freed_memory
from ..runtime.mesh import vote_mesh
from ..storage import ShardInfo, VotesFile, index_path, params_fingerprint, save_sharded_votes
from ..version import __version__
from ..votes.distributed import (VoteEngine, batched_vote_engine, distributed_votes, fsdp_votes,
                                 reference_vote_engine)
from .prepare import PreparedRun

logger = logging.getLogger("gradfix_hf")


def aggregation(recipe: Recipe) -> str:
    """How the recipe's mask needs the votes aggregated: ``mean`` for the mean-gradient mask, else ``majority``."""
    return "mean" if recipe.method.sign_source == "mean-votes" else "majority"


def vote_engine_name(recipe: Recipe, objective: Objective) -> str:
    """``batched`` (one batched backward per micro-batch) unless the recipe or the objective needs the exact
    one-sample ``reference`` loop (``vote_engine: reference`` / ``--vote-engine reference``, or a user loss)."""
    if recipe.vote_engine != "auto":
        return recipe.vote_engine
    return "batched" if objective.supports_batching else "reference"


def vote_sharding(recipe: Recipe, context: ProcessContext) -> str:
    """How this launch's processes share the vote: ``fsdp`` (θ_B sharded by FSDP2) or ``samples`` (θ_B replicated).
    ``auto`` follows the launcher: fsdp under ``accelerate launch --use_fsdp`` (``ACCELERATE_USE_FSDP``). One
    process has nothing to share: samples."""
    if not context.distributed:
        return "samples"
    if recipe.vote_sharding != "auto":
        return recipe.vote_sharding
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "samples"


def vote_device(context: ProcessContext) -> torch.device:
    """Where this process votes: its accelerator under a launcher with several processes, else the CPU."""
    return context.device if context.distributed else torch.device("cpu")


def vote_dtype(prepared: PreparedRun, device: torch.device) -> torch.dtype:
    """θ_B's dtype during the vote: the recipe's ``vote_dtype``; ``auto`` is θ_B's stored float dtype on a GPU and
    float32 on a CPU (whose bf16 speed varies by processor, and bf16 changes some votes). Checked on ``device`` now:
    a dtype it cannot run is refused before any model is loaded."""
    name = prepared.recipe.vote_dtype
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        stored = {prepared.plan.readers[TARGET].dtype(prepared.plan.keys[TARGET][n]) for n in prepared.voted_shapes}
        stored = {d for d in stored if d.is_floating_point}
        return stored.pop() if len(stored) == 1 else torch.float32
    dtype = getattr(torch, name)
    problem = None
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        problem = f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    else:
        try:  # what a vote does in this dtype: a matmul and its backward
            a = torch.ones(2, 2, dtype=dtype, device=device, requires_grad=True)
            (a @ a).sum().backward()
        except (RuntimeError, TypeError) as exc:
            problem = str(exc).splitlines()[0]
    if problem:
        raise RecipeError(f"vote_dtype: {name} cannot run on {device}: {problem}. Use float32 (or auto).")
    return dtype


def _vote_engine(prepared: PreparedRun, model: torch.nn.Module, context: ProcessContext) -> VoteEngine:
    """The per-process vote engine (the one place that chooses among engines with the same contract)."""
    device = context.device if context.distributed else None
    if vote_engine_name(prepared.recipe, prepared.objective) == "batched":
        return batched_vote_engine(model, prepared.objective, list(prepared.voted_shapes),
                                   micro_batch_size=prepared.recipe.vote_batch_size, device=device)
    return reference_vote_engine(model, prepared.objective.loss, list(prepared.voted_shapes), device=device)


def compute_recipe_votes(prepared: PreparedRun, *, progress: bool = True) -> VotesFile:
    """Stage 1: votes of θ_B (fp32, eval mode, with the fine-tune's head) on the recipe's samples.

    Under a launcher with several processes (``accelerate launch``, ``torchrun``) every process computes its
    contiguous shard of the samples and the shards are all-reduced (:mod:`gradfix_hf.votes.distributed`):
    every process returns the same complete votes; majority votes are bitwise those of one process, mean
    votes exact up to float summation order. Only the caller decides who writes them (the CLI: the main
    process).
    """
    if prepared.samples is None:
        raise RecipeError("data: computing votes needs a data section.")
    context = process_context()
    dtype = vote_dtype(prepared, vote_device(context))
    batched = vote_engine_name(prepared.recipe, prepared.objective) == "batched"
    checkpointing = prepared.recipe.vote_gradient_checkpointing
    shard = None
    if vote_sharding(prepared.recipe, context) == "fsdp":
        if not batched:
            raise RecipeError("vote_sharding: 'fsdp' forms per-sample gradients with the batched engine, but this "
                              "recipe votes with the one-sample reference loop (vote_engine).")
        mesh = vote_mesh(context, prepared.recipe.vote_shard_size or None)
        if mesh.device.type == "cpu":
            return_freed_memory()  # the gathered blocks' memory goes back, or the shards save none (allocator.py)
        if context.is_main:
            logger.info("votes: θ_B sharded by FSDP2 over %d processes (%d shards × %d replica%s)", mesh.world,
                        mesh.shard_size, mesh.replicas, "s" if mesh.replicas > 1 else "")
        model = load_sharded_base_model(prepared.plan, mesh, dtype,
                                        prepare=checkpoint_blocks if checkpointing else None)
        votes, evidence = fsdp_votes(model, prepared.objective, prepared.examples, list(prepared.voted_shapes),
                                     mesh=mesh, aggregation=aggregation(prepared.recipe),
                                     micro_batch_size=prepared.recipe.vote_batch_size, progress=progress)
        shard = ShardInfo(mesh.shard_index, mesh.shard_size, dict(prepared.voted_shapes), writes=mesh.writes_shard)
        del model
    else:
        model = load_base_model(prepared.plan, dtype)
        if checkpointing:
            checkpoint_blocks(model)
        votes, evidence = distributed_votes(_vote_engine(prepared, model, context), prepared.examples,
                                            prepared.voted_shapes, aggregation=aggregation(prepared.recipe),
                                            progress=progress, context=context,
                                            block=prepared.recipe.vote_batch_size if batched else 1)
    target = prepared.models[TARGET]
    metadata = {
        "format": "gradfix-votes", "format_version": "1", "n_samples": str(len(prepared.examples)),
        "aggregation": aggregation(prepared.recipe), "objective": prepared.recipe.objective,
        "target": target.name, "target_revision": target.commit_hash or "",
        "target_fingerprint": prepared.plan.target_fingerprint,
        "data_source": prepared.samples.source, "data_fingerprint": prepared.samples.fingerprint,
        "params_fingerprint": params_fingerprint(prepared.voted_shapes), "library_version": __version__,
        "engine": vote_engine_name(prepared.recipe, prepared.objective),
        "data_selection": json.dumps({**(prepared.samples.selection or {}), "rows": prepared.samples.indices}),
        "not_voted": json.dumps(prepared.not_voted),  # τ_A ≡ 0 there: no vote (not a tie), θ_B's tensor out
        "vote_dtype": str(dtype).removeprefix("torch."),
    }
    return VotesFile(votes=votes, metadata=metadata, evidence=evidence, shard=shard)


def save_votes(votes: VotesFile, path: Union[str, os.PathLike], *, context: Optional[ProcessContext] = None,
               overwrite: bool = False) -> Path:
    """Write what :func:`compute_recipe_votes` returned, on every process of a launch together: one votes file
    (written by the main process), or a sharded one (each shard by a process that holds it; returns the index)."""
    context = context or process_context()
    if votes.shard is not None:
        return save_sharded_votes(votes, path, context=context, overwrite=overwrite)
    on_main_process(context, lambda: votes.save(path, overwrite=overwrite))
    return Path(path)


def _readable(votes: VotesFile, cached: Optional[Path], context: ProcessContext) -> VotesFile:
    """Votes every process can merge with: a sharded vote's parts are written (to the cache, else to a temporary
    folder removed when the votes are no longer used) and opened as one file, read tensor by tensor."""
    if votes.shard is None:
        return votes
    folder = None
    if cached is None:
        folder = Path(context.broadcast_object(tempfile.mkdtemp(prefix="gradfix-votes-") if context.is_main else None))
    written = save_votes(votes, cached or folder / "votes.safetensors", context=context)
    opened = VotesFile.load(written)
    if folder is not None and context.is_main:
        weakref.finalize(opened, shutil.rmtree, folder, ignore_errors=True)
    return opened


def load_votes_for(prepared: PreparedRun, path: Union[str, os.PathLike], *, force: bool = False) -> VotesFile:
    """A votes file checked against this run's target (its tensors' fingerprint, revision and shapes), parameter
    set and aggregation. ``force`` uses votes recorded for another target anyway (with a warning)."""
    votes = VotesFile.load(local_path(path, where="votes", error=VotesFileError))  # a file or an hf:// reference
    target = prepared.models[TARGET]
    votes.check_target(_expected_votes(votes, prepared), target=target.name, commit_hash=target.commit_hash,
                       source=str(path))
    _check_target_fingerprint(votes, prepared, path, force)
    if votes.metadata["aggregation"] != aggregation(prepared.recipe):
        raise VotesFileError(f"{path}: votes were aggregated with {votes.metadata['aggregation']!r} but mask "
                             f"{prepared.recipe.name_and_mask} needs {aggregation(prepared.recipe)!r}.")
    if prepared.samples is not None and votes.metadata["data_fingerprint"] != prepared.samples.fingerprint:
        logger.warning("%s: votes were computed on other samples (fingerprint %s, recipe's data gives %s).",
                       path, votes.metadata["data_fingerprint"], prepared.samples.fingerprint)
    return votes


def _expected_votes(votes: VotesFile, prepared: PreparedRun) -> dict[str, tuple[int, ...]]:
    """The tensors a votes file must cover for this run: the voted ones. Where the run did not read the checkpoints'
    values (a merge from votes files), the file's own ``not_voted`` list stands in for the unmoved tensors; the
    merge then checks that τ_A is zero on each of them as it reads it."""
    shapes = prepared.plan.layout.parameters
    if prepared.plan.unmoved is None:
        skipped = set(votes.not_voted)
        return {n: shapes[n] for n in prepared.plan.transported if n not in skipped}
    voted = prepared.voted_shapes
    # a file that voted on more (an older one, or one shared by several sources) serves too: the extra votes are unused
    return {**voted, **{n: shapes[n] for n in prepared.plan.transported if n in votes.votes and n not in voted}}


def _check_target_fingerprint(votes: VotesFile, prepared: PreparedRun, path: Union[str, os.PathLike],
                              force: bool) -> None:
    """Votes are signs of θ_B's gradients: those of another model (even one with the same shapes) are refused."""
    recorded = votes.metadata.get("target_fingerprint")
    target = prepared.models[TARGET]
    if recorded is None:
        logger.warning("%s: written by gradfix_hf %s, before votes files recorded their target's fingerprint: "
                       "only its shapes are checked against %s.", path, votes.metadata["library_version"],
                       target.name)
        return
    current = prepared.plan.target_fingerprint
    if recorded == current:
        return
    message = (f"{path}: these votes were computed on another target: {votes.metadata['target']} (tensors' "
               f"fingerprint {recorded}), but this run's target is {target.name} (fingerprint {current}). Votes "
               "are the signs of the target's own gradients; compute them on this target (gradfix votes, "
               "compute_recipe_votes from Python), or use them anyway with --force (force=True from Python).")
    if not force:
        raise VotesFileError(message)
    logger.warning("%s (forced)", message)


def vote_key(prepared: PreparedRun) -> str:
    """What a vote depends on: target (and revision), objective, aggregation, the vote's dtype, samples, voted
    tensors, and a copied head (its loss depends on it). Tasks with the same key share one votes computation."""
    target = prepared.models[TARGET]
    head = None
    if prepared.plan.copied_from_finetune:
        source_ft = prepared.models[SOURCE_FT]
        head = [source_ft.name, source_ft.commit_hash, sorted(prepared.plan.copied_from_finetune)]
    dtype = vote_dtype(prepared, vote_device(process_context()))
    parts = [target.name, target.commit_hash, prepared.plan.target_fingerprint, prepared.recipe.objective,
             aggregation(prepared.recipe), *([] if dtype == torch.float32 else [str(dtype)]),
             prepared.samples.fingerprint if prepared.samples else None, params_fingerprint(prepared.voted_shapes),
             head, prepared.plan.layout.auto_class_name]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def recipe_votes(recipe: Recipe, prepared: list[PreparedRun], *, votes: Optional[Union[str, os.PathLike]] = None,
                 progress: bool = True, force: bool = False) -> list[Optional[VotesFile]]:
    """The votes of every task: from its votes file, from ``votes_cache`` or computed; each distinct vote
    (same :func:`vote_key`) is computed once. Methods with a shared vote (``multi_source``) vote once, with the
    first task's data and head, for every source. Every process takes part in computations; only the main
    process writes the cache. ``force``: see :func:`load_votes_for`."""
    if not recipe.needs_votes:
        return [None] * len(prepared)
    if votes is not None and len(prepared) > 1 and not recipe.method.method.shared_vote:
        raise RecipeError("one votes file was given (--votes, votes= from Python), but this merge has one vote per "
                          "task: set tasks[i].votes in the recipe instead.")
    context = process_context()
    computed: dict[str, VotesFile] = {}
    out: list[Optional[VotesFile]] = []
    for i, run in enumerate(prepared):
        if recipe.method.method.shared_vote and i > 0:
            out.append(out[0])
            continue
        path = (votes if i == 0 else None) or run.task.votes
        if path:
            out.append(load_votes_for(run, path, force=force))
            continue
        key = vote_key(run)
        cached = Path(recipe.votes_cache) / f"{key}.safetensors" if recipe.votes_cache else None
        if key not in computed and cached is not None and (cached.is_file() or index_path(cached).is_file()):
            computed[key] = load_votes_for(run, cached, force=force)
            logger.info("%s: votes from the cache %s", run.task.where, cached)
        if key not in computed:
            votes_here = compute_recipe_votes(run, progress=progress)
            if votes_here.shard is not None:
                computed[key] = _readable(votes_here, cached, context)
            else:
                computed[key] = votes_here
                if cached is not None:
                    on_main_process(context, functools.partial(votes_here.save, cached))
        out.append(computed[key])
    return out