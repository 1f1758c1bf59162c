"""``--no-progress``: silence every progress bar of the process — gradfix's own (``progress=False``), and those of
datasets, huggingface_hub, transformers and evaluate, and any other tqdm bar.

The libraries read their switches (``HF_DATASETS_DISABLE_PROGRESS_BARS``, ``HF_HUB_DISABLE_PROGRESS_BARS``,
which transformers follows, ``TQDM_DISABLE``) when they are imported, so setting them before the first model is
loaded silences them without importing them; a library already imported is switched off directly.
"""
from __future__ import annotations

import importlib
import os
import sys

ENVIRONMENT = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
#: (module, its function that turns its bars off) for libraries imported before the switch
IMPORTED_SWITCHES = (("datasets", "disable_progress_bars"), ("huggingface_hub.utils", "disable_progress_bars"),
                     ("transformers.utils.logging", "disable_progress_bar"),
                     ("evaluate.utils.logging", "disable_progress_bar"))


def silence_progress_bars() -> None:
    """No progress bar from here on, in this process and the processes it starts (imports nothing new)."""
    os.environ.update(ENVIRONMENT)
    for module, switch in IMPORTED_SWITCHES:
        if module.split(".")[0] in sys.modules:
            getattr(importlib.import_module(module), switch)()
