"""SFT rows: N rows of a split vote (``data.rows``), with no classes; a held-out split is scored row by row.

The rows are drawn with ``data.seed`` (``data.selection: random``) or chosen by ``data.selection`` on θ_B's
embeddings of a seeded pool of at most ``data.selection_pool`` rows, exactly as the K rows of one class are
(:mod:`.samples`): SFT rows are one class. Every row's columns are checked when it is rendered (null, empty or
malformed messages are refused with the row named, :mod:`gradfix_hf.objectives.chat`); plain-text columns are also
checked whole, here.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

from ..errors import DataError
from ..objectives import LabelSpace
from .loading import describe_source, with_commit
from .samples import LabelledSamples, check_columns, choose_on_embeddings, fingerprint
from .selection import Embedder
from .values import check_values

ONE_CLASS = LabelSpace(names=["row"], lookup={})


def select_rows(dataset, data_cfg, *, columns: Sequence[str], text_columns: Sequence[str] = (),
                where: str = "data", fingerprint_extra: Optional[dict] = None,
                embed: Optional[Embedder] = None) -> LabelledSamples:
    """``data.rows`` rows of ``dataset`` (see the module docstring); without ``embed`` a non-random selection only
    checks the split's size and returns no rows (a dry run). ``columns`` are those a row is read from."""
    source = describe_source(data_cfg.path, data_cfg.split, dataset)
    n = data_cfg.rows
    if len(dataset) == 0:
        raise DataError(f"{where}: {source} is empty (no rows).")
    check_columns(dataset, list(dict.fromkeys([*columns, *text_columns])), f"{where} ({source})")
    check_values(dataset, text_columns, None, f"{where} ({source})")
    if len(dataset) < n:
        raise DataError(f"{where}: {source} has {len(dataset)} row(s); data.rows asks for {n}.")
    rng = random.Random(data_cfg.seed)
    method = data_cfg.selection
    selection: dict = {"method": method}
    extra = {**(fingerprint_extra or {}), "rows": n}
    if method == "random":
        chosen = rng.sample(range(len(dataset)), n)
    else:
        cap = data_cfg.selection_pool
        pool = sorted(rng.sample(range(len(dataset)), cap)) if cap is not None and len(dataset) > cap \
            else list(range(len(dataset)))
        selection["pool"] = cap
        extra.update(selection=method, selection_pool=cap)
        if embed is None:
            selection.update(deferred=True, planned_samples=n)
            return LabelledSamples(rows=[], labels=[], source=source, fingerprint="", selection=selection)
        chosen = choose_on_embeddings(dataset, {0: pool}, n, method, embed, where, ONE_CLASS)
    rows = [dataset[i] for i in chosen]
    fp = fingerprint([{c: r[c] for c in columns} for r in rows], [0] * n, extra)
    return LabelledSamples(rows=rows, labels=[0] * n, source=source, fingerprint=fp, indices=list(chosen),
                           selection=selection)


def evaluation_rows(dataset, max_samples: Optional[int], source: str, *, columns: Sequence[str],
                    text_columns: Sequence[str] = (), where: str = "evaluation") -> LabelledSamples:
    """All (or the first ``max_samples``) rows of a held-out SFT split."""
    source = with_commit(dataset, source)
    if len(dataset) == 0:
        raise DataError(f"{where}: the evaluation split {source} is empty.")
    check_columns(dataset, list(dict.fromkeys([*columns, *text_columns])), f"{where} ({source})")
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    check_values(dataset, text_columns, None, f"{where} ({source})", rows=count)
    rows = [dataset[i] for i in range(count)]
    return LabelledSamples(rows=rows, labels=[0] * count, source=source, fingerprint="", indices=list(range(count)))
