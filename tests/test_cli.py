"""The `gradfix` console script: help texts, run, dry run, inspect, and the quickstart; what --help and input
errors import (no model library), outputs required and checked before any work, progress bars and warnings."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import recipe_dict
from gradfix_hf.cli import EPILOG, main
from gradfix_hf.errors import GradFixError

ROOT = Path(__file__).resolve().parents[1]
#: what `--help` must not import; the model libraries no input error may import before the first model is needed
HEAVY = ("torch", "transformers", "datasets", "evaluate", "peft", "accelerate", "huggingface_hub", "safetensors")
MODEL_LIBRARIES = ("transformers", "datasets", "evaluate", "peft", "accelerate")


def _write(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.parametrize("command", [[], ["run"], ["votes"], ["inspect"], ["methods"], ["push"], ["quickstart"]])
def test_help_texts(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: gradfix" in text
    if command == ["run"]:
        assert "--dry-run" in text and "--votes" in text and "--alpha" in text and "--push-to-hub" in text
    if command == ["votes"]:
        assert "--task" in text
    if command == ["push"]:
        assert "--private" in text and "--revision" in text


def test_run_then_inspect_output(trios, tmp_path, capsys):
    trio = trios("bert")
    recipe = _write(tmp_path, recipe_dict("bert", trio, evaluation={"path": str(trio["test"])}))
    out = tmp_path / "out"
    assert main(["run", recipe, "-o", str(out), "--alpha", "0.3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "θ_B zero-shot" in printed and "GradFix (gradfix)" in printed and f"wrote {out}" in printed
    # the table says which split it scores: a plain run scores evaluation.split, the validation split
    assert f"accuracy, f1 on the validation split {trio['test']} (20 samples):" in printed
    report = json.loads((out / "gradfix_report.json").read_text())
    assert report["method"]["alpha"] == 0.3
    assert report["evaluation"]["split_role"] == "validation" and "method_chosen_on" not in report["evaluation"]
    assert f"Scores on the validation split `{trio['test']}`" in (out / "README.md").read_text()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "output" and summary["method"]["alpha"] == 0.3
    assert summary["totals"] == report["totals"]
    # a second run into the same folder is refused, and --overwrite replaces it
    assert main(["run", recipe, "-o", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", recipe, "-o", str(out), "--no-progress", "--overwrite", "--mask", "naive"]) == 0
    assert json.loads((out / "gradfix_report.json").read_text())["method"]["mask"] == "naive"


def test_alpha_override_is_validated(trios, tmp_path, capsys):
    recipe = _write(tmp_path, recipe_dict("bert", trios("bert")))
    assert main(["run", recipe, "-o", str(tmp_path / "o"), "--alpha", "2", "--dry-run"]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["run", recipe, "-o", str(tmp_path / "o"), "--alpha", "2", "--force", "--dry-run"]) == 0
    assert not (tmp_path / "o").exists()


#: the ``gradfix`` console script as installed, run by this interpreter (whatever the shell's PATH holds)
CONSOLE_SCRIPT = ("import sys; from importlib.metadata import entry_points; "
                  "(script,) = entry_points(group='console_scripts', name='gradfix'); "
                  "sys.exit(script.load()(sys.argv[1:]))")


def test_console_script_and_module_entry_points(trios, tmp_path):
    recipe = _write(tmp_path, recipe_dict("gpt2", trios("gpt2")))
    env = {**os.environ, "PATH": ""}  # nothing may depend on the shell's PATH
    done = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "run", recipe, "--dry-run"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "nothing was computed or written" in done.stdout
    plan = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    assert plan["vote_samples"] == 6 and plan["tensors"]["transported"] > 10
    module = subprocess.run([sys.executable, "-m", "gradfix_hf", "--version"], capture_output=True, text=True, env=env)
    assert module.returncode == 0 and "gradfix_hf" in module.stdout


@pytest.mark.slow
def test_quickstart_runs_offline(tmp_path):
    """The README's first run: builds the tiny models and runs the quickstart recipe, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "quickstart", "--workdir", str(tmp_path / "qs"),
                           "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "qs" / "output" / "gradfix_report.json").read_text())
    methods = [row["method"] for row in report["evaluation"]["rows"]]
    assert methods == ["zero-shot", "few-shot", "naive", "gradfix"]
    assert report["evaluation"]["n_samples"] == 200
    assert "GradFix (gradfix)" in done.stdout
    # the recipe in recipes/ is the same file the quickstart runs
    from gradfix_hf.quickstart import RECIPE_PATH
    repo_recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml")
    assert open(repo_recipe).read() == RECIPE_PATH.read_text()


# ---------------------------------------------------------------- what --help and input errors import

def _gradfix(*args, cwd=None, env=None):
    """``python -X importtime -m gradfix_hf ARGS``: (exit code, stdout, stderr without the import lines, the
    top-level packages it imported)."""
    env = {k: v for k, v in (env or os.environ).items() if k != "GRADFIX_NUM_THREADS"}  # which imports torch
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradfix_hf", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    imported, other = set(), []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if match:
            imported.add(match.group(1).split(".")[0])
        elif not line.startswith("import time:"):
            other.append(line)
    return done.returncode, done.stdout, "\n".join(other), imported


def test_the_importtime_parser_sees_heavy_imports():
    """The checks below are not vacuous: a command that loads the registry shows torch."""
    code, out, _, imported = _gradfix("methods", "--json")
    assert code == 0 and "torch" in imported and "gradfix_hf" in imported
    assert not imported & set(MODEL_LIBRARIES)  # the registry is torch only


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["votes", "--help"],
                                  ["sweep", "--help"], ["methods", "--help"], ["inspect", "--help"],
                                  ["push", "--help"], ["quickstart", "--help"]])
def test_help_and_version_import_no_heavy_module(args):
    code, out, err, imported = _gradfix(*args)
    assert code == 0, err
    assert ("usage: gradfix" in out) or ("gradfix_hf" in out)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_building_the_parser_imports_no_heavy_module():
    code = ("import gradfix_hf.cli, sys; gradfix_hf.cli.build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def local_recipe(tmp_path):
    """A recipe whose inputs are local folders (nothing in them is read before the checks below)."""
    for name in ("source", "source-ft", "target"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    raw = {"models": {"source": str(tmp_path / "source"), "source_finetuned": str(tmp_path / "source-ft"),
                      "target": str(tmp_path / "target")},
           "data": {"path": str(tmp_path / "train.jsonl")}, "method": {"mask": "gradfix"}}

    def write(name="recipe.yaml", **changes):
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**raw, **changes}))
        return path

    return write


def test_input_errors_import_no_model_library(local_recipe, tmp_path):
    recipe = local_recipe()
    cases = {
        "missing recipe": (["run", tmp_path / "nope.yaml", "-o", tmp_path / "out"], "recipe file not found"),
        "bad value": (["run", local_recipe("bad.yaml", method={"alpah": 0.5}), "-o", tmp_path / "out"],
                      "Did you mean 'alpha'"),
        "bad alpha": (["run", recipe, "-o", tmp_path / "out", "--alpha", "2"], "outside (0, 1]"),
        "no output": (["run", recipe], "-o/--output"),
        "output is the target": (["run", recipe, "-o", tmp_path / "target", "--overwrite"], "is models.target"),
        "output inside the target": (["run", recipe, "-o", tmp_path / "target" / "out"],
                                     "lies inside models.target"),
        "votes over the data": (["votes", recipe, "-o", tmp_path / "train.jsonl", "--overwrite"], "is data.path"),
        "sweep json over the recipe": (["sweep", local_recipe("s.yaml", evaluation={"split": "train"}), "--json",
                                        tmp_path / "s.yaml"], "is the recipe"),
        "sweep without evaluation": (["sweep", recipe], "a sweep needs an evaluation section"),
        "push refused": (["run", recipe, "-o", tmp_path / "out", "--push-to-hub", "org/name"],
                         "push to Hub repo 'org/name'"),  # no token, or offline: checked before the run
    }
    env = {**os.environ, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    for name, (args, fragment) in cases.items():
        code, out, err, imported = _gradfix(*args, env=env)
        assert code == 2 and "gradfix: error: " in err and fragment in err, (name, err)
        assert not imported & set(MODEL_LIBRARIES), (name, sorted(imported & set(MODEL_LIBRARIES)))
        if name == "missing recipe":  # nothing but YAML is needed to find that out
            assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*.partial-*"))


# ---------------------------------------------------------------- a run needs an output

def test_a_run_needs_an_output(trios, tmp_path, capsys, monkeypatch):
    raw = recipe_dict("bert", trios("bert"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_module = __import__("importlib").import_module("gradfix_hf.transport.run")
    monkeypatch.setattr(run_module, "prepare", lambda *a, **k: pytest.fail("the run started"))
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no output folder" in err and "-o/--output" in err and "output.path" in err
    import gradfix_hf

    for call in (lambda: gradfix_hf.transport(raw, progress=False),
                 lambda: gradfix_hf.run_recipe(gradfix_hf.Recipe.from_dict(raw), progress=False)):
        with pytest.raises(GradFixError) as info:
            call()
        assert "output_dir=" in str(info.value) and "output.path" in str(info.value) and "-o" not in str(info.value)
    assert sorted(tmp_path.iterdir()) == [path]  # nothing written, no temporary folder chosen
    monkeypatch.undo()
    # the recipe's output.path is enough, and a dry run writes nothing and needs none
    assert gradfix_hf.run_recipe(gradfix_hf.Recipe.from_dict(raw), dry_run=True)["ok"] is True
    with_path = {**raw, "output": {"path": str(tmp_path / "from-recipe")}}
    result = gradfix_hf.transport(with_path, progress=False)
    assert result.output_dir == tmp_path / "from-recipe" and (result.output_dir / "model.safetensors").is_file()


# ---------------------------------------------------------------- the epilog and `gradfix methods`

def test_the_epilog_links_files_that_exist():
    linked = re.findall(r"\b((?:docs|recipes)/[\w./-]*)", EPILOG)
    assert linked and "docs/usage.md" in linked
    for target in linked:
        assert (ROOT / target.rstrip(".")).exists(), target
    assert "## Recipes" in (ROOT / "docs" / "usage.md").read_text()


def test_methods_lists_auto_with_its_candidates(capsys):
    assert main(["methods", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    auto = described["methods"]["auto"]
    assert auto["parameters"]["candidates"]["default"] == ["naive", "gradfix", {"mask": "gradfix",
                                                                                 "no_evidence": "keep"}, "soft"]
    assert "validation" in auto["description"]
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^auto  \(", text, re.M) and re.search(r"^    candidates\s+list\s+default", text, re.M)
