"""The package's layering (docs/architecture.md) holds: import-linter's contracts are kept, no module imports
another module's private name, modules stay small, lines stay short, and the public API imports from where the
docs say it lives."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradfix_hf"
MAX_MODULE_LINES = 400
MAX_LINE = 120


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, name, line) of every ``from X import name`` in the file, inside functions too."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [(target, alias.name, node.lineno) for alias in node.names]
    return found


def test_import_linter_contracts_are_kept():
    """Layers, no cycle anywhere, the recipe as data, mergekit only in its integration (pyproject.toml)."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())", "--no-cache", "--config", "pyproject.toml"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_no_module_imports_another_modules_private_name():
    modules = _modules()
    offences = []
    for module, path in modules.items():
        for target, name, line in _imported_names(module, path):
            if not target.startswith("gradfix_hf") or f"{target}.{name}" in modules:
                continue  # an external package, or a submodule (``from . import fold``)
            if name.startswith("_") and not name.startswith("__") and target != module:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
    assert not offences, "\n".join(offences)


def test_the_private_name_check_sees_a_private_import(tmp_path):
    """The check above is not vacuous: it parses relative imports the way Python resolves them."""
    path = tmp_path / "fake.py"
    path.write_text("from ..storage.checkpoint import _helper\nfrom . import fold\n")
    names = _imported_names("gradfix_hf.votes.fake", path)
    assert ("gradfix_hf.storage.checkpoint", "_helper", 1) in names
    assert ("gradfix_hf.votes", "fold", 2) in names


def test_modules_are_small_and_lines_short():
    long_modules, long_lines = [], []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        long_lines += [f"{path.relative_to(ROOT)}:{i}: {len(text)} characters" for i, text in enumerate(lines, 1)
                       if len(text) > MAX_LINE]
    assert not long_modules and not long_lines, "\n".join(long_modules + long_lines)


def test_ruff_finds_nothing():
    """The formatter's line length (pyproject.toml [tool.ruff]) and pyflakes over the package."""
    pytest.importorskip("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "gradfix_hf"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


PUBLIC_API = {
    "gradfix_hf": ["rebase", "transport", "Recipe", "TransportResult", "sweep", "SweepResult", "run_recipe", "prepare",
                   "compute_recipe_votes", "VotesFile", "GradFixError", "RecipeError", "__version__"],
    "gradfix_hf.transport": ["transport", "run_recipe", "prepare", "compute_recipe_votes", "load_votes_for",
                             "recipe_votes", "TransportResult", "PreparedRun", "evaluation_metrics"],
    "gradfix_hf.recipe": ["Recipe", "ModelRef", "DataConfig", "EvaluationConfig", "MethodConfig", "OutputConfig",
                          "TaskConfig"],
    "gradfix_hf.votes": ["VotesFile", "compute_votes", "compute_votes_batched", "params_fingerprint", "vote_dtype",
                         "NOISE_FLOOR", "VoteFold"],
    "gradfix_hf.storage": ["VotesFile", "CheckpointReader", "ShardedSafetensorsWriter"],
    "gradfix_hf.methods": ["get", "register", "registered_methods", "MergeMethod", "ParameterSpec", "MASK_VARIANTS"],
    "gradfix_hf.merge": ["MergeJob", "merge_to_folder", "apply_in_memory", "write_lora_adapter"],
    "gradfix_hf.errors": ["GradFixError", "RecipeError", "ModelResolutionError", "CompatibilityError", "DataError",
                          "VotesFileError", "NonFiniteError"],
    "gradfix_hf.integrations.mergekit": ["register_methods", "check_config", "main"],
    "gradfix_hf.rebase": ["rebase", "infer_rebase", "RebaseOptions", "RebaseInference"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_public_api_imports_from_where_the_docs_say(module):
    loaded = importlib.import_module(module)
    missing = [name for name in PUBLIC_API[module] if not hasattr(loaded, name)]
    assert not missing, f"{module} lacks {missing}"
    documented = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"`{module}" in documented


def test_public_api_objects_are_what_they_claim():
    import gradfix_hf
    from gradfix_hf.methods import registered_methods
    from gradfix_hf.transport import run

    assert callable(gradfix_hf.transport) and gradfix_hf.transport is run.transport
    assert gradfix_hf.rebase is importlib.import_module("gradfix_hf.rebase.run").rebase
    assert gradfix_hf.VotesFile is importlib.import_module("gradfix_hf.votes").VotesFile
    assert {"gradfix", "task_arithmetic", "ties", "mask_then_merge", "merge_then_mask",
            "multi_source"} <= set(registered_methods())
    assert not hasattr(gradfix_hf.Recipe, "run")  # a recipe is data; gradfix_hf.transport runs it
