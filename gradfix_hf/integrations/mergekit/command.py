"""The command: ``gradfix-mergekit-yaml``, mergekit's own ``mergekit-yaml`` (same arguments and options) with the
GradFix methods registered and the config checked first, since the stock command cannot know the methods
(mergekit has no plugin discovery).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ...errors import GradFixError
from .config_check import check_config
from .registration import register_methods


def _config_argument(command: Any, args: Sequence[str], prog: str) -> Optional[str]:
    """The CONFIG_FILE argument as mergekit-yaml's own parser reads it (None when it cannot tell)."""
    try:
        with command.make_context(prog, list(args), resilient_parsing=True) as ctx:
            return ctx.params.get("config_file")
    except Exception:  # mergekit's parser reports the problem itself  # noqa: BLE001
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``gradfix-mergekit-yaml CONFIG OUT [mergekit-yaml options]``: mergekit-yaml with the GradFix methods
    registered and their config checked first. Exits with mergekit-yaml's status, or 2 on a GradFix error."""
    prog = "gradfix-mergekit-yaml"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        register_methods()
    except ImportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from mergekit.scripts import run_yaml

    try:
        config_file = _config_argument(run_yaml.main, args, prog)
        if config_file is not None and Path(config_file).is_file():
            check_config(config_file)
        run_yaml.main.main(args=args, prog_name=prog)  # click: exits with mergekit-yaml's status
    except GradFixError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
