"""Tensors on disk: model checkpoints read lazily tensor by tensor, the votes file (the one file between the two
stages), and the sharded safetensors writer of the output. No model is built here; files are read and written."""
from .checkpoint import CheckpointReader, align_names, check_finite
from .safetensors_format import DTYPE_NAMES, DTYPES, TensorEntry, pread_tensor, read_header
from .votes_file import VotesFile, params_fingerprint, vote_dtype
from .writer import ShardedSafetensorsWriter

__all__ = ["CheckpointReader", "align_names", "check_finite", "DTYPES", "DTYPE_NAMES", "TensorEntry",
           "pread_tensor", "read_header", "VotesFile", "params_fingerprint", "vote_dtype",
           "ShardedSafetensorsWriter"]
