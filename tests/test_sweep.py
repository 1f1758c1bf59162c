"""α chosen on validation, reported on test: the sweep against independent full runs at the chosen α."""
import importlib
import json

import pytest

from conftest import recipe_dict
from gradfix_hf import sweep, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import RecipeError
from gradfix_hf.quickstart.toy import write_jsonl

transport_module = importlib.import_module("gradfix_hf.transport")


@pytest.fixture(scope="module")
def splits(trios, tmp_path_factory):
    """Validation and test files cut from the trio's held-out rows (disjoint from each other)."""
    trio = trios("bert")
    rows = [json.loads(line) for line in trio["test"].read_text().splitlines()]
    root = tmp_path_factory.mktemp("splits")
    write_jsonl(root / "validation.jsonl", rows[:10])
    write_jsonl(root / "test.jsonl", rows[10:])
    return trio, root / "validation.jsonl", root / "test.jsonl"


def sweep_recipe(trio, validation, test, **method):
    return recipe_dict("bert", trio, models={"target_finetuned": str(trio["target_finetuned"])},
                       evaluation={"path": str(validation), "test_path": str(test)},
                       method={"mask": "gradfix", "alpha": 1.0, **method})


def test_sweep_picks_alpha_on_validation_and_matches_full_runs(splits, tmp_path, monkeypatch):
    trio, validation, test = splits
    calls = []
    real = transport_module.compute_recipe_votes
    monkeypatch.setattr(transport_module, "compute_recipe_votes", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = sweep(sweep_recipe(trio, validation, test), alphas=[0.25, 0.5, 1.0], progress=False)
    assert len(calls) == 1  # one vote for the whole grid and every method
    assert set(result.methods) == {"naive", "gradfix", "oracle"}
    assert result.validation["n_samples"] == 10 and result.test["n_samples"] == 10
    for key, entry in result.methods.items():
        scores = {float(a): s for a, s in entry["validation"].items()}
        assert entry["best_validation"] == max(scores.values())
        assert entry["best_alpha"] == min(a for a, s in scores.items() if s == max(scores.values()))
    # the chosen α of GradFix, run end to end (streaming merge, separate evaluation): the same scores
    best = result.methods["gradfix"]["best_alpha"]
    for split, expected in ((validation, result.methods["gradfix"]["best_validation"]),
                            (test, result.methods["gradfix"]["test"])):
        raw = sweep_recipe(trio, validation, test, alpha=best)
        raw["evaluation"] = {"path": str(split)}
        run = transport(raw, tmp_path / f"out-{split.stem}", progress=False)
        rows = {r["method"]: r["score"] for r in run.evaluation["rows"]}
        assert rows["gradfix"] == pytest.approx(expected)
        assert rows["zero-shot"] == pytest.approx(result.zero_shot["validation" if split == validation else "test"])
    table = result.to_markdown()
    assert "GradFix (gradfix)" in table and "test accuracy" in table


def test_sweep_warns_when_the_best_alpha_is_on_the_grid_edge(splits):
    trio, validation, test = splits
    result = sweep(sweep_recipe(trio, validation, test), alphas=[0.4, 0.8], progress=False)
    assert len(result.warnings) == len(result.methods)  # two values: the best is always an edge
    assert "grid's" in result.warnings[0] and "extend evaluation.alphas" in result.warnings[0]


def test_sweep_cli(splits, tmp_path, capsys):
    trio, validation, test = splits
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(sweep_recipe(trio, validation, test)))
    assert main(["sweep", str(path), "--alphas", "0.3,0.6,0.9", "--json", str(tmp_path / "s.json"),
                 "--markdown", str(tmp_path / "s.md"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "α chosen on" in out and "| GradFix (gradfix) |" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["alphas"] == [0.3, 0.6, 0.9] and "gradfix" in saved["methods"]
    assert (tmp_path / "s.md").read_text().startswith("| method |")


@pytest.mark.parametrize("alphas,message", [("a,b", "--alphas: cannot read 'a,b'"), ("0.5,-1", "every α must be")])
def test_sweep_bad_alphas(splits, tmp_path, capsys, alphas, message):
    trio, validation, test = splits
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(sweep_recipe(trio, validation, test)))
    assert main(["sweep", str(path), "--alphas", alphas]) == 2
    assert message in capsys.readouterr().err


def test_sweep_needs_an_evaluation_split_and_valid_recipe_alphas(trios):
    with pytest.raises(RecipeError, match="a sweep needs an evaluation section"):
        sweep(recipe_dict("bert", trios("bert")), progress=False)
    with pytest.raises(RecipeError, match=r"evaluation\.alphas: a non-empty list of positive numbers"):
        sweep(recipe_dict("bert", trios("bert"), evaluation={"alphas": [0.5, 0]}), progress=False)
