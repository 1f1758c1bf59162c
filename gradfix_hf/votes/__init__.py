"""Stage 1 (data-aware, costly): per-sample gradient signs on θ_B folded into integer votes."""
from .reference_engine import AGGREGATIONS, compute_votes
from .votes_file import VotesFile, params_fingerprint, vote_dtype

__all__ = ["AGGREGATIONS", "compute_votes", "VotesFile", "params_fingerprint", "vote_dtype"]
