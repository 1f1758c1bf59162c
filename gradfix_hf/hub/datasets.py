"""Hub data sets: the card, then only the data files of the chosen config, pinned to one commit."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..errors import GradFixError
from .failures import hub_failure
from .snapshots import snapshot, snapshot_commit

logger = logging.getLogger("gradfix_hf")

#: data files a Hub data set may hold (and their compressed forms), for ``datasets``' packaged builders
DATA_EXTENSIONS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow", "txt")
DATA_COMPRESSIONS = ("", ".gz", ".zst", ".bz2", ".xz")
#: a data set's card and config files (.gitattributes, tiny, so that the first pass always matches a file)
DATASET_METADATA = ["README.md", ".huggingface.yaml", "dataset_infos.json", ".gitattributes"]


def _dataset_patterns(folder: Path, name: Optional[str]) -> list[str]:
    """The data files of config ``name`` per the card's ``configs`` metadata, else every data file."""
    every = [f"*.{ext}{comp}" for ext in DATA_EXTENSIONS for comp in DATA_COMPRESSIONS]
    readme = folder / "README.md"
    if not readme.is_file():
        return every
    try:
        from huggingface_hub import DatasetCard

        configs = DatasetCard.load(readme).data.to_dict().get("configs") or []
    except Exception:  # a card we cannot read: fall back to every data file
        return every
    chosen = [c for c in configs if isinstance(c, dict) and c.get("config_name", "default") == (name or "default")]
    if not chosen and name is None:
        chosen = [c for c in configs if isinstance(c, dict) and c.get("default")] or (
            configs if len(configs) == 1 else [])
    patterns: list[str] = []
    for config in chosen:
        data_files = config.get("data_files")
        items = data_files if isinstance(data_files, list) else [data_files]
        for item in items:
            paths = item.get("path") if isinstance(item, dict) else item
            patterns += [p for p in (paths if isinstance(paths, list) else [paths]) if isinstance(p, str)]
        if config.get("data_dir"):
            patterns.append(config["data_dir"].rstrip("/") + "/*")
    return patterns or every


def snapshot_dataset(repo_id: str, *, name: Optional[str] = None, revision: Optional[str] = None,
                     token: Optional[str] = None, where: str = "data", error: type = GradFixError) -> tuple[Path, str]:
    """The files of a Hub data set (card, then the data files of config ``name``) in the local cache, pinned to
    one commit; return (folder, commit). ``datasets.load_dataset(folder, name)`` reads them like the Hub would."""
    try:
        folder = snapshot(repo_id, repo_type="dataset", revision=revision, allow=DATASET_METADATA, ignore=[],
                          token=token)
        commit = snapshot_commit(folder)
        patterns = _dataset_patterns(folder, name)
        folder = snapshot(repo_id, repo_type="dataset", revision=commit or revision,
                          allow=DATASET_METADATA + patterns, ignore=[], token=token)
    except Exception as exc:
        reason = hub_failure(exc, kind="dataset", repo_id=repo_id, revision=revision, token=token)
        raise error(f"{where}: cannot fetch data set {repo_id!r}"
                    f"{f' at revision {revision!r}' if revision else ''} from the Hub: {reason}.") from None
    logger.info("%s: data set %s@%s resolved to commit %s", where, repo_id, revision or "main", commit)
    return folder, commit
