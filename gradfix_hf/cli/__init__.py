"""The ``gradfix`` command: rebase a fine-tune, run a recipe, compute votes, inspect votes files and outputs, run
the quickstart.

The top of the layers (docs/architecture.md): each command imports the machinery it runs when it runs, so that
``--help``, ``--version`` and input errors need none of it: the modules here import only the errors, the version
and the launcher's environment at the top; a command reads its recipe (torch, for the method registry), checks its
outputs and the Hub token, and only then imports transformers and the rest. One module per concern: the arguments
(:mod:`.parser`), what commands share (:mod:`.common`), the recipe commands (:mod:`.recipe_commands`), the
commands on what a run wrote (:mod:`.folder_commands`), ``rebase`` (:mod:`.rebase_command`), the entry point
(:mod:`.main`).
"""
from .main import main
from .parser import EPILOG, build_parser

__all__ = ["EPILOG", "build_parser", "main"]
