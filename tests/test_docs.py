"""The docs hold together: every relative link in README.md and docs/ resolves to a file that exists, and every
Python and YAML example parses (a snippet with a syntax error, or a recipe that is not YAML, cannot be copied)."""
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
        ROOT / "experiments" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _links(text: str) -> list[str]:
    without_code = FENCE.sub("", text)
    return [target for target in LINK.findall(without_code)
            if not target.startswith(("http://", "https://", "mailto:", "#"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = [target for target in _links(doc.read_text(encoding="utf-8"))
              if not (doc.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_the_link_check_sees_a_broken_link():
    assert _links("see [x](docs/nope.md) and [y](https://a.b) and `[z](in/code.md)`") == ["docs/nope.md",
                                                                                             "in/code.md"]
    assert _links("```\n[a](skipped.md)\n```\n[b](kept.md)\n") == ["kept.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_and_yaml_examples_parse(doc):
    for language, body in FENCE.findall(doc.read_text(encoding="utf-8")):
        if language == "python":
            ast.parse(body)  # a SyntaxError names the line
        elif language in ("yaml", "yml"):
            assert yaml.safe_load(body) is not None, f"{doc.name}: an empty YAML example"


def _figures_module():
    spec = importlib.util.spec_from_file_location("doc_figures", ROOT / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_check_compares_text_exactly_and_numbers_within_the_tolerance():
    close = _figures_module()._numbers_close
    assert close("naive 0.850 at α 0.9", "naive 0.850 at α 0.9", 0.05)
    assert close("naive 0.850 at α 0.9", "naive 0.830 at α 0.9", 0.05)  # another CPU kind
    assert not close("naive 0.850 at α 0.9", "naive 0.780 at α 0.9", 0.05)
    assert not close("naive 0.850 at α 0.9", "GradFix 0.850 at α 0.9", 0.05)
    assert not close("2199 / 79296", "2199 / 89296", 0.05)  # large numbers: relative


def test_every_generated_block_is_in_the_docs():
    figures = _figures_module()
    for name, blocks in figures.FILES.items():
        found = {m.group("name") for m in figures.BLOCK.finditer((ROOT / name).read_text(encoding="utf-8"))}
        assert set(blocks) <= found, f"{name}: missing generated blocks {set(blocks) - found}"


@pytest.mark.slow
def test_the_docs_figures_are_what_the_runs_give(quickstart_root):
    """docs/figures.py --check: every generated block of README.md and docs/ matches the quickstart's runs."""
    root, _ = quickstart_root
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "figures.py"), "--check", "--workdir",
                           str(root / "gradfix-quickstart")], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
def test_the_readme_python_example_runs_right_after_the_quickstart(quickstart_root):
    """The README's Python snippet, as written, from a folder with gradfix-quickstart/ and recipes/ (twice: the
    second run replaces the first's outputs, as overwrite=True says)."""
    root, _ = quickstart_root
    (root / "recipes").mkdir(exist_ok=True)
    shutil.copy(ROOT / "recipes" / "quickstart.yaml", root / "recipes" / "quickstart.yaml")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = next(body for language, body in FENCE.findall(readme)
                   if language == "python" and "gradfix_hf.transport(" in body)
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", snippet], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
    assert "'label': 'positive'" in done.stdout or "'label': 'negative'" in done.stdout
    assert (root / "gradfix-quickstart" / "output-python" / "gradfix_report.json").is_file()
    assert (root / "my-transported-model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_readme_rebase_examples_run_right_after_the_quickstart(quickstart_root):
    """The README's first usage example, ``gradfix rebase`` on the quickstart's models (shell and Python), as
    written, from a folder holding gradfix-quickstart/ (twice: ``--overwrite`` / ``overwrite=True`` replace)."""
    root, _ = quickstart_root
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shell = next(body for language, body in FENCE.findall(readme)
                 if language == "bash" and "gradfix rebase gradfix-quickstart" in body)
    shell = shell.replace("\\\n", " ").replace("gradfix ", f"{sys.executable} -m gradfix_hf ")
    snippet = next(body for language, body in FENCE.findall(readme)
                   if language == "python" and "gradfix_hf.rebase(" in body)
    for _ in range(2):
        done = subprocess.run(["bash", "-euc", shell], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "method auto: chose" in done.stdout and "old base" in done.stdout
        done = subprocess.run([sys.executable, "-c", snippet], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "LoRA adapter r=8" in done.stdout
    assert (root / "rebased" / "recipe.yaml").is_file()
    assert (root / "rebased-chat-lora" / "adapter_config.json").is_file()
