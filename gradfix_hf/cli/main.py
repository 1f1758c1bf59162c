"""``gradfix``'s entry point: parse, run the command, print a bad input as one line, close the process group."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from ..errors import GradFixError
from ..runtime.launch import launched_rank
from .folder_commands import inspect_command, methods_command, push_command, quickstart_command
from .parser import build_parser
from .rebase_command import rebase_command
from .recipe_commands import run_command, sweep_command, votes_command

def error_line(exc: BaseException) -> str:
    """The error as one line; an OSError names its file and the system's reason."""
    if isinstance(exc, OSError) and not isinstance(exc, GradFixError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


COMMANDS = {"rebase": rebase_command, "run": run_command, "votes": votes_command, "sweep": sweep_command,
            "inspect": inspect_command, "methods": methods_command, "quickstart": quickstart_command,
            "push": push_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from ..runtime.allocator import reuse_from_environment

    reuse_from_environment()  # GRADFIX_REUSE_FREED_MEMORY=1: keep freed blocks (gradfix_hf/runtime/allocator.py)
    if getattr(args, "no_progress", False):  # also the bars of the libraries the run imports later
        from ..runtime.progress import silence_progress_bars

        silence_progress_bars()
    code = 1  # stays 1 when an exception escapes the command
    try:
        if os.environ.get("GRADFIX_NUM_THREADS"):  # torch's CPU threads, every command (gradfix_hf/runtime/threads.py)
            from ..runtime.threads import apply_configured_threads

            apply_configured_threads()
        code = COMMANDS[args.command](args)
    except (GradFixError, OSError) as exc:  # bad input, or a file the system refuses: one line, no traceback
        if launched_rank() == 0:  # under a launcher every process fails alike; the main one says why
            print(f"gradfix: error: {error_line(exc)}", file=sys.stderr)
        code = 2
    finally:
        if "gradfix_hf.runtime.processes" in sys.modules:  # only a command that got that far has a process group
            from ..runtime.processes import close_process_group

            close_process_group(finished=code == 0)  # a barrier first only if every process got here
    return code

