"""Tensors on disk: model checkpoints read lazily tensor by tensor, the votes file (the one file between the two
stages), the sharded safetensors writer of the output, and where outputs may be written (:mod:`.destinations`).
No model is built here; files are read and written."""
from .checkpoint import CheckpointReader, align_names, check_finite, tensors_fingerprint
from .destinations import atomic_file, atomic_folder, check_destination, check_not_an_input, real_path
from .safetensors_format import DTYPE_NAMES, DTYPES, TensorEntry, pread_tensor, read_header
from .sharded_votes import ShardInfo, index_path, save_sharded_votes, shard_rows
from .votes_file import VotesFile, is_votes_file, params_fingerprint, vote_dtype
from .writer import ShardedSafetensorsWriter

__all__ = ["CheckpointReader", "align_names", "check_finite", "tensors_fingerprint", "DTYPES", "DTYPE_NAMES",
           "TensorEntry", "pread_tensor", "read_header", "VotesFile", "is_votes_file", "params_fingerprint",
           "vote_dtype", "ShardedSafetensorsWriter", "atomic_file", "atomic_folder", "check_destination",
           "check_not_an_input", "real_path", "ShardInfo", "index_path", "save_sharded_votes", "shard_rows"]
