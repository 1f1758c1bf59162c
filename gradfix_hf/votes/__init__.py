"""Stage 1 (data-aware, costly): per-sample gradient signs on θ_B folded into integer votes."""
from .batched_engine import compute_votes_batched
from .reference_engine import AGGREGATIONS, NOISE_FLOOR, compute_votes, drop_noise
from .votes_file import VotesFile, params_fingerprint, vote_dtype

__all__ = ["AGGREGATIONS", "NOISE_FLOOR", "compute_votes", "compute_votes_batched", "drop_noise", "VotesFile", "params_fingerprint", "vote_dtype"]
