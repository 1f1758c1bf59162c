"""Stage 1 (data-aware, costly): per-sample gradient signs on θ_B folded into integer votes."""
from .batched_engine import compute_votes_batched
from .fold import AGGREGATIONS, NOISE_FLOOR, VoteFold, drop_noise
from .reference_engine import compute_votes
from .votes_file import VotesFile, params_fingerprint, vote_dtype

__all__ = ["AGGREGATIONS", "NOISE_FLOOR", "VoteFold", "compute_votes", "compute_votes_batched", "drop_noise", "VotesFile", "params_fingerprint", "vote_dtype"]
