"""A finished transport as Python users get it: the output folder, its report, and the model ready for
``pipeline(...)``, with ``save_pretrained`` and ``push_to_hub`` named as the Hugging Face libraries name them."""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Optional, Union

from ..merge import load_adapter_model
from ..recipe import Recipe
from ..storage import real_path
from .output_folder import atomic_folder, check_destination, push_output_folder, read_report


class TransportResult:
    """A finished transport: the output folder, its report, and the model ready for ``pipeline(...)``."""

    def __init__(self, output_dir: Union[str, Path], recipe: Optional[Recipe] = None):
        self.output_dir = Path(output_dir)
        self.report = read_report(self.output_dir)
        self.recipe = recipe

    @functools.cached_property
    def model(self):
        import transformers

        if "lora" in self.report:  # a LoRA adapter for θ_B (output.as_lora): θ_B with the adapter applied
            return load_adapter_model(self.output_dir, self.report)
        return getattr(transformers, self.report["model_class"]).from_pretrained(str(self.output_dir))

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.output_dir))

    @property
    def evaluation(self) -> Optional[dict]:
        return self.report.get("evaluation")

    def save_pretrained(self, save_directory: Union[str, os.PathLike], overwrite: bool = False) -> Path:
        """Copy the complete output folder (weights, config, tokenizer, report, card, recipe)."""
        destination = Path(save_directory)
        if real_path(destination) == real_path(self.output_dir):
            return destination
        check_destination(destination, overwrite, [("the output folder it copies", self.output_dir)])
        with atomic_folder(destination, overwrite=overwrite) as tmp:
            shutil.copytree(self.output_dir, tmp, dirs_exist_ok=True)
        return destination

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    revision: Optional[str] = None, commit_message: Optional[str] = None,
                    commit_description: Optional[str] = None):
        """Create ``repo_id`` if needed and upload the output folder (weights, config, tokenizer, model card,
        report, recipe) to branch ``revision`` (default main) in one commit; see :func:`gradfix_hf.hub.push_folder`.

        The token comes from ``token`` or the standard places (HF_TOKEN, ``hf auth login``); ``private``
        applies when the repo is created. Returns huggingface_hub's ``CommitInfo`` (``.oid``, ``.commit_url``).
        """
        return push_output_folder(self.output_dir, repo_id, private=private, token=token, revision=revision,
                                  commit_message=commit_message, commit_description=commit_description)

    def __repr__(self) -> str:
        kept = self.report["totals"]["kept_fraction"]
        return f"TransportResult(output_dir={str(self.output_dir)!r}, kept_fraction={kept:.4f})"