"""How many tokens θ_B accepts, and ``data.max_length`` capped to it.

``data.max_length`` (default 128) is what the recipe asks for; a model with fewer positions (a tiny BERT with
``max_position_embeddings: 64``, a GPT-2 with ``n_positions: 64``) would fail deep in its embedding lookup on a
longer input. The objective therefore tokenizes with the capped length (:func:`capped_max_length`, applied by
:meth:`Objective.fit_positions <gradfix_hf.objectives.base.Objective.fit_positions>`), and the run records why.
"""
from __future__ import annotations

from typing import Optional

from ..errors import DataError

#: config attributes that bound the input length (first found wins); T5 (relative positions) has none of them
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length",
                 "n_ctx")
#: models whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 positions are unused
PADDING_OFFSET_MODELS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                                   "data2vec-text", "ibert", "longformer", "luke", "markuplm", "mpnet", "xmod",
                                   "lilt", "layoutlmv3"})


def _own_positions(config) -> Optional[int]:
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(config, "model_type", None) in PADDING_OFFSET_MODELS:
                pad = getattr(config, "pad_token_id", None)
                value -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
            return value
    return None


def model_positions(config) -> Optional[int]:
    """The most tokens one input of a model with ``config`` can hold, or None when unbounded (relative positions).

    Read from the config itself, else from the text config of a multimodal config (``text_config``).
    """
    found = _own_positions(config)
    if found is not None:
        return found
    text = None
    if callable(getattr(config, "get_text_config", None)):
        try:
            text = config.get_text_config()
        except (ValueError, AttributeError):  # several text configs, or none
            text = None
    text = text if text is not None and text is not config else getattr(config, "text_config", None)
    return _own_positions(text) if text is not None else None


def capped_max_length(requested: int, config, *, reserve: int = 0,
                      where: str = "models.target") -> tuple[int, Optional[str]]:
    """``(used, why)``: ``requested`` capped at the positions of ``config`` less ``reserve`` (tokens appended
    after the truncated text, e.g. a causal LM's label word); ``why`` is None when nothing was capped."""
    positions = model_positions(config)
    if positions is None or requested + reserve <= positions:
        return requested, None
    used = positions - reserve
    kept = f", {reserve} kept for the label words" if reserve else ""
    if used < 2:
        raise DataError(f"data.max_length: {where} has {positions} positions{kept}: no room left for the text.")
    return used, f"{where} has {positions} positions{kept}"
