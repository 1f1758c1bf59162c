"""``gradfix_hf.rebase(...)``: carry a fine-tune (full or LoRA) onto a new base release in one call.

It infers the recipe (:mod:`.inferred_recipe`), runs it as any recipe runs (votes on the new base, ``method:
auto`` choosing between naive addition and the GradFix variants on the validation split, the streaming merge) and
writes the output folder with ``recipe.yaml``, the recipe it ran, beside the usual report and model card.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import GradFixError
from .inference import RebaseInference, RebaseOptions
from .inferred_recipe import infer_rebase

PathLike = Union[str, os.PathLike]


def rebase(finetuned: PathLike, onto: PathLike, data: PathLike, output_dir: Optional[PathLike] = None, *,
           base: Optional[str] = None, objective: Optional[str] = None, format: Optional[str] = None,
           samples: Optional[int] = None, split: Optional[str] = None, data_name: Optional[str] = None,
           text_column: str = "text", label_column: str = "label", label_words: Optional[dict] = None,
           validation_size: Union[int, float] = 0.2,
           max_eval_samples: Optional[int] = 200, alphas: Optional[list[float]] = None,
           as_lora: Optional[int] = None, full: bool = False, seed: int = 0, push_to_hub: Optional[str] = None,
           private: Optional[bool] = None, token: Optional[str] = None, dry_run: bool = False,
           overwrite: bool = False, progress: bool = True, allow_pickle: bool = False,
           trust_remote_code: bool = False) -> Any:
    """Rebase ``finetuned`` (a full fine-tune or a PEFT LoRA adapter of an old base, a folder or a Hub id) onto
    ``onto`` (the new base) with the labelled or SFT samples of ``data``; return the
    :class:`~gradfix_hf.TransportResult` (``.model``, ``.tokenizer``, ``.report``, ``push_to_hub``).

    The old base is ``base``, else the adapter's ``base_model_name_or_path``, else the model card's
    ``base_model``; the objective comes from the model and the data's columns (``objective``/``format`` settle
    it); a validation split is carved from ``data`` (``validation_size``) when it has none. A LoRA in gives a LoRA
    out (``full=True``: full weights). ``dry_run=True`` returns what was inferred (a dict) before any weight is
    downloaded. Without ``output_dir``, ``push_to_hub`` is required and the folder is a temporary one.

    >>> result = rebase("old-chat-lora", onto="new-base", data="chats.jsonl", output_dir="out")  # doctest: +SKIP
    >>> pipeline("text-generation", model=result.model, tokenizer=result.tokenizer)             # doctest: +SKIP
    """
    options = RebaseOptions(
        base=base, objective=objective, format=format, samples=samples, split=split, data_name=data_name,
        text_column=text_column, label_column=label_column, label_words=label_words, validation_size=validation_size,
        max_eval_samples=max_eval_samples, alphas=alphas, as_lora=as_lora, full=full, seed=seed,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if output_dir is None and push_to_hub is None and not dry_run:
        raise GradFixError("rebase: give an output folder (-o/--output, output_dir=...) or a Hub repo to push to "
                           "(--push-to-hub, push_to_hub=...).")
    inferred = infer_rebase(os.fspath(finetuned), os.fspath(onto), os.fspath(data), options, token=token)
    rebase_recipe(inferred)  # the recipe is valid (a bad flag value fails here, dry run or not)
    if dry_run:
        return inferred.as_dict()
    return run_rebase(inferred, output_dir, push_to_hub=push_to_hub, private=private, token=token,
                      overwrite=overwrite, progress=progress)


def rebase_recipe(inferred: RebaseInference):
    """The :class:`~gradfix_hf.Recipe` of an inferred rebase."""
    from ..recipe import Recipe

    return Recipe.from_dict(inferred.recipe)


def run_rebase(inferred: RebaseInference, output_dir: Optional[PathLike], *, push_to_hub: Optional[str] = None,
               private: Optional[bool] = None, token: Optional[str] = None, overwrite: bool = False,
               progress: bool = True) -> Any:
    """Run an inferred rebase into ``output_dir`` (or a temporary folder removed with the result), then push."""
    from ..transport import run_recipe

    temporary = None
    if output_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="gradfix-rebase-"))
        output_dir = temporary / "output"
    try:
        result = run_recipe(rebase_recipe(inferred), output_dir, overwrite=overwrite, token=token,
                            progress=progress, rebase=inferred.as_dict())
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if result is None:  # a process other than the main one of a launch
        return None
    if temporary is not None:
        weakref.finalize(result, shutil.rmtree, temporary, True)
    if push_to_hub:
        result.push_to_hub(push_to_hub, private=private, token=token)
    return result
