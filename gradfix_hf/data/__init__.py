"""The labelled samples D_s and the held-out splits: load a split, map labels, choose K rows per class (seeded,
or on θ_B's embeddings: :mod:`.selection`) or N rows of SFT data (:mod:`.rows`), and fingerprint what was chosen."""
from .rows import evaluation_rows, select_rows
from .holdout import CARVED_SPLIT, carve_validation
from .loading import (HUB_PROVENANCE, LOCAL_BUILDERS, describe_source, load_split, split_names, with_commit,
                      with_images)
from .samples import (LabelledSamples, check_columns, evaluation_samples, fingerprint, label_space_from_rows,
                      select_per_class)
from .selection import ALGORITHMS, Embedder, embed_rows, herding, k_center, k_medoids, k_medoids_cost, target_embedder
from .unreadable import unreadable_line
from .values import check_values

__all__ = ["HUB_PROVENANCE", "LOCAL_BUILDERS", "LabelledSamples", "describe_source", "load_split", "with_commit",
           "with_images", "check_columns", "evaluation_samples", "fingerprint", "label_space_from_rows",
           "select_per_class", "ALGORITHMS", "Embedder", "embed_rows", "herding", "k_center", "k_medoids",
           "k_medoids_cost", "target_embedder", "check_values", "unreadable_line", "select_rows", "evaluation_rows",
           "CARVED_SPLIT", "carve_validation", "split_names"]
