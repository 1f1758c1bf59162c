"""The Hugging Face Hub: resolve models, adapters, data sets and votes files by id + revision, and push outputs.

Everything goes through ``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``HfApi``), so
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the local cache (``HF_HUB_CACHE``) and the standard token places
(``HF_TOKEN``, then the ``hf auth login`` cache) are honoured. gradfix_hf never prints, logs or writes a token.
Local folders resolve the same way, without the Hub. One module per kind of thing pulled or pushed:
:mod:`.models` (and :mod:`.adapters`), :mod:`.datasets`, :mod:`.files` (``hf://`` references), :mod:`.push`.
"""
from .adapters import ADAPTER_CONFIG, ADAPTER_SAFETENSORS, AdapterInfo, is_adapter_folder
from .datasets import snapshot_dataset
from .failures import hub_endpoint, hub_failure, redact
from .files import HF_URI_PREFIX, is_hub_reference, local_path, pinned_reference, resolve_hub_file
from .models import looks_local, resolve_model
from .push import check_push_token, folder_files, push_folder
from .resolved import ResolvedModel

__all__ = ["ResolvedModel", "resolve_model", "looks_local", "AdapterInfo", "ADAPTER_CONFIG", "ADAPTER_SAFETENSORS",
           "is_adapter_folder", "snapshot_dataset", "hub_endpoint", "hub_failure", "redact", "HF_URI_PREFIX",
           "is_hub_reference", "local_path", "pinned_reference", "resolve_hub_file", "check_push_token",
           "folder_files", "push_folder"]
