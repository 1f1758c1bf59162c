"""The `gradfix` console script: help texts, run, dry run, inspect, and the quickstart."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import recipe_dict
from gradfix_hf.cli import main


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
    report = json.loads((out / "gradfix_report.json").read_text())
    assert report["method"]["alpha"] == 0.3
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
