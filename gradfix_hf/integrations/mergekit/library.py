"""mergekit itself, the one way in: imported on first use (never on ``import gradfix_hf``) with the version this
integration needs, or an error that says how to install it; and the lock around what mergekit's threads share.

mergekit is LGPL-3.0-only: imported, never copied.
"""
from __future__ import annotations

import threading

INSTALL_HINT = 'pip install "gradfix_hf[mergekit]"'
#: one lock for mergekit's method registry and the inputs cached across tensors (θ_A readers, votes, parameters)
LOCK = threading.RLock()


def import_merge_methods():
    """``mergekit.merge_methods``, once its ``register()`` API is there (mergekit>=0.1.5,<0.2)."""
    try:
        import mergekit.merge_methods as merge_methods
    except ImportError as exc:
        raise ImportError(f"gradfix_hf's mergekit methods need mergekit>=0.1.5,<0.2 ({exc}); install it with: "
                          f"{INSTALL_HINT}") from exc
    if not hasattr(merge_methods, "register") or not hasattr(merge_methods, "GroupMergeMethod"):
        from importlib.metadata import version

        raise ImportError(f"gradfix_hf's mergekit methods need mergekit>=0.1.5,<0.2 (the register() API); found "
                          f"mergekit {version('mergekit')}. Upgrade with: {INSTALL_HINT}")
    return merge_methods
