"""Stage 1 (data-aware, costly): per-sample gradient signs on θ_B folded into integer votes.

Two engines with one contract: the exact one-sample loop (:mod:`.reference_engine`) and the batched engine
(:mod:`.batched_engine`); :mod:`.fold` reduces per-sample gradients to votes as soon as they exist, and
:mod:`.distributed` spreads the samples over processes. The votes file they produce is
:class:`gradfix_hf.storage.VotesFile` (re-exported here).
"""
from ..storage import VotesFile, params_fingerprint, vote_dtype
from .batched_engine import compute_votes_batched
from .fold import AGGREGATIONS, NOISE_FLOOR, VoteFold, drop_noise
from .reference_engine import compute_votes

__all__ = ["AGGREGATIONS", "NOISE_FLOOR", "VoteFold", "compute_votes", "compute_votes_batched", "drop_noise",
           "VotesFile", "params_fingerprint", "vote_dtype"]
