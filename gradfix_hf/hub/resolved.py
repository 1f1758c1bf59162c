"""A model reference resolved to local files: the folder, its weight files and where they came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..recipe import ModelRef


@dataclass
class ResolvedModel:
    """Local files of one model, plus where they came from."""

    ref: ModelRef
    role: str
    local_dir: Path
    weight_files: list[Path]
    weight_format: str  # "safetensors" or "pickle"
    repo_id: Optional[str] = None
    commit_hash: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.repo_id or str(self.local_dir)

    @property
    def is_adapter(self) -> bool:
        """A PEFT LoRA adapter (``adapter_config.json``), not a full model: see :mod:`gradfix_hf.lora`."""
        return "adapter" in self.extra

    def describe(self) -> dict:
        """The model as the report records it: reference, Hub id, revision, resolved commit, weight format."""
        out = {"role": self.role, "path": self.ref.path, "repo_id": self.repo_id, "revision": self.ref.revision,
               "commit_hash": self.commit_hash, "subfolder": self.ref.subfolder, "weights": self.weight_format}
        if self.is_adapter:  # the adapter's LoRA settings, and whether it names the base it is applied to
            out["adapter"] = self.extra["adapter"].describe()
            if "base_matches" in self.extra:
                out["adapter"]["base_matches"] = self.extra["base_matches"]
        return out
