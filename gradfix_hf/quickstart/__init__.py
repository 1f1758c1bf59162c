"""The embedded default: tiny models and data built offline, and the quickstart recipe that uses them.

``gradfix quickstart`` builds the workdir once (:mod:`.build`: the quickstart's trio, then the second task and
second source the other offline recipes in ``recipes/`` use) and runs the quickstart recipe, saying on stderr what
it is doing at each phase; stdout gets only the results table. ``gradfix quickstart --chat`` builds a tiny chat
model pair instead (:mod:`.chat`: a Llama-architecture causal LM with a ChatML template, a full and a LoRA chat
fine-tune, toy conversations) and runs ``recipes/sft-chat.yaml`` on it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import yaml

from ..recipe import Recipe
from ..runtime import small_model_threads
from .chat import ensure_chat_assets
from .build import (BUILD_VERSION, MARKER, Log, asset_paths, build_quickstart_assets, built_version,
                    ensure_quickstart_assets, print_to_stderr)
from .toy import LABELS, word_tokenizer

if TYPE_CHECKING:
    from ..transport import TransportResult

RECIPE_PATH = Path(__file__).with_name("recipe.yaml")
CHAT_RECIPE_PATH = Path(__file__).with_name("chat-recipe.yaml")  # recipes/sft-chat.yaml
DEFAULT_FOLDER = "./gradfix-quickstart/"


def quickstart_recipe(workdir: Union[str, Path], *, chat: bool = False) -> Recipe:
    """The packaged quickstart recipe (``chat``: the chat one) with its paths pointing into ``workdir``."""
    path = CHAT_RECIPE_PATH if chat else RECIPE_PATH
    text = path.read_text().replace(DEFAULT_FOLDER, f"{Path(workdir).resolve()}/")
    return Recipe.from_dict(yaml.safe_load(text))


def describe_run(recipe: Recipe) -> str:
    """One line saying what running the quickstart recipe does."""
    if recipe.objective == "sft":
        name = "recipes/sft-chat.yaml"
        steps = [f"votes of {recipe.data.rows} conversations on θ_B"]
        if recipe.method.is_auto:
            steps.append(f"{len(recipe.method.parameters['candidates'])} candidates (naive addition and masks of τ_A) "
                         "scored on validation NLL")
        steps.append("streaming merge")
    else:
        name = "recipes/quickstart.yaml"
        votes = recipe.data.samples_per_class * len(LABELS)
        steps = [f"votes of {votes} samples on θ_B", f"{recipe.method.mask} mask of τ_A", "streaming merge"]
    if recipe.evaluation is not None:
        with open(recipe.evaluation.path, encoding="utf-8") as handle:
            held_out = sum(1 for line in handle if line.strip())
        if recipe.evaluation.max_samples is not None:
            held_out = min(held_out, recipe.evaluation.max_samples)
        steps.append(f"held-out scores on {held_out} samples")
    return f"running {name}: " + ", ".join(steps)


def run_quickstart(workdir: Union[str, Path] = "gradfix-quickstart", *, progress: bool = True,
                   log: Optional[Log] = None, chat: bool = False) -> "TransportResult":
    """Build the tiny models once (kept in ``workdir``) and run the quickstart recipe; returns the result.
    ``chat``: the chat model pair (``workdir/chat/``) and the chat recipe (objective ``sft``) instead.

    ``log`` gets a line per phase (default: stderr). Runs on one CPU thread (``GRADFIX_NUM_THREADS`` overrides
    it, :mod:`gradfix_hf.runtime.threads`): fast on a busy machine, and the same figures whatever the core count."""
    workdir = Path(workdir)
    log = log or print_to_stderr
    with small_model_threads():
        built = ensure_chat_assets(workdir, log=log) if chat else ensure_quickstart_assets(workdir, log=log)
        if not built:
            log(f"gradfix quickstart: reusing the tiny models in {workdir / 'chat' if chat else workdir} "
                "(built earlier)")
        recipe = quickstart_recipe(workdir, chat=chat)
        log(describe_run(recipe))
        from ..transport import transport

        return transport(recipe, overwrite=True, progress=progress)


__all__ = ["BUILD_VERSION", "CHAT_RECIPE_PATH", "MARKER", "RECIPE_PATH", "asset_paths", "build_quickstart_assets",
           "built_version", "describe_run", "ensure_chat_assets", "ensure_quickstart_assets", "quickstart_recipe",
           "run_quickstart", "word_tokenizer"]
