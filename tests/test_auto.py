"""method: auto — the validation split picks the mask and α among candidates (naive included)."""
import importlib

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import recipe_dict
from gradfix_hf import Recipe, sweep, transport
from gradfix_hf.recipe import DEFAULT_CANDIDATES, candidate_key
from gradfix_hf.cli import main
from gradfix_hf.errors import RecipeError

transport_module = importlib.import_module("gradfix_hf.transport.recipe_votes")


@pytest.fixture(scope="module")
def splits(bert_splits):
    return bert_splits


def auto_recipe(trio, validation, test=None, **method):
    evaluation = {"path": str(validation), "alphas": [0.5, 1.0, 1.5], "few_shot_steps": 0}
    if test is not None:
        evaluation["test_path"] = str(test)
    raw = recipe_dict("bert", trio, evaluation=evaluation)
    raw["method"] = {"name": "auto", **method}
    return raw


def test_auto_writes_the_best_candidate_on_validation(splits, tmp_path, monkeypatch):
    trio, validation, _ = splits
    calls = []
    real = transport_module.compute_recipe_votes
    monkeypatch.setattr(transport_module, "compute_recipe_votes", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = transport(auto_recipe(trio, validation), tmp_path / "auto", progress=False)
    assert len(calls) == 1  # one vote for every candidate and α
    auto = result.report["auto"]
    keys = [candidate_key({"mask": c} if isinstance(c, str) else c) for c in DEFAULT_CANDIDATES]
    assert list(auto["candidates"]) == keys
    best = max(c["best_validation"] for c in auto["candidates"].values())
    assert auto["validation"] == best >= auto["candidates"]["naive"]["best_validation"]
    first_best = next(k for k in keys if auto["candidates"][k]["best_validation"] == best)
    assert auto["key"] == first_best  # ties go to the earlier candidate
    # the written model is the plain GradFix run of the chosen mask at the chosen α, tensor for tensor
    written = yaml.safe_load((result.output_dir / "gradfix_recipe.yaml").read_text())
    assert written["method"]["name"] == "gradfix" and written["method"]["alpha"] == auto["alpha"]
    assert written["method"]["mask"] == auto["parameters"]["mask"]
    raw = recipe_dict("bert", trio, evaluation={"path": str(validation), "few_shot_steps": 0})
    raw["method"] = {**auto["parameters"], "alpha": auto["alpha"], "force": auto["alpha"] > 1}
    plain = transport(raw, tmp_path / "plain", progress=False)
    ours, theirs = load_file(result.output_dir / "model.safetensors"), load_file(plain.output_dir / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the chosen candidate's validation score is what a plain run at that α scores on the same split
    chosen_row = next(r for r in plain.evaluation["rows"] if r["method"] not in ("zero-shot", "naive")) \
        if auto["parameters"]["mask"] != "naive" else next(r for r in plain.evaluation["rows"] if r["method"] == "naive")
    assert chosen_row["score"] == pytest.approx(auto["validation"])
    card = (result.output_dir / "README.md").read_text()
    assert "Automatic choice (`method: auto`)" in card and f"**{auto['label']}**" in card
    # no test split: the table is the validation split that chose, and says so
    evaluation = result.evaluation
    assert evaluation["split_role"] == "validation" and evaluation["method_chosen_on"] == "validation"
    assert evaluation["split"] == str(validation)
    assert f"Scores on the validation split `{validation}`" in card and "optimistic for the chosen row" in card


def test_auto_sweep_reports_every_candidate_and_the_same_choice(splits, tmp_path):
    trio, validation, test = splits
    raw = auto_recipe(trio, validation, test, candidates=["naive", "gradfix", "force"])
    result = sweep(raw, progress=False)
    assert set(result.methods) == {"naive", "gradfix", "force"}
    assert all("test" in entry for entry in result.methods.values())
    run = transport(raw, tmp_path / "out", progress=False)
    assert result.chosen["key"] == run.report["auto"]["key"]
    assert result.chosen["alpha"] == run.report["auto"]["alpha"]
    assert "method: auto chooses" in result.to_markdown()
    # with a test split, the run scores the chosen method and the baselines there: the sweep's test scores
    evaluation = run.evaluation
    assert evaluation["split_role"] == "test" and evaluation["method_chosen_on"] == "validation"
    assert evaluation["split"] == str(test) and evaluation["n_samples"] == result.test["n_samples"]
    rows = {row["method"]: row for row in evaluation["rows"]}
    chosen = result.chosen
    assert rows[chosen["parameters"]["mask"]]["alpha"] == chosen["alpha"]
    assert rows[chosen["parameters"]["mask"]]["score"] == pytest.approx(result.methods[chosen["key"]]["test"])
    assert rows["zero-shot"]["score"] == pytest.approx(result.zero_shot["test"])
    assert run.report["auto"]["split"] == str(validation)  # the choice itself was made on validation
    card = (run.output_dir / "README.md").read_text()
    assert f"Scores on the test split `{test}`" in card and "took no part in the choice" in card


@pytest.mark.parametrize("with_test", [False, True])
def test_auto_from_the_cli_prints_the_choice(splits, tmp_path, capsys, with_test):
    trio, validation, test = splits
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(auto_recipe(trio, validation, test if with_test else None,
                                               candidates=["naive", "gradfix"])))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "method auto: chose" in out and "θ_B + α·τ_A (naive)" in out
    assert f"on the validation split {validation};" in out  # what chose
    if with_test:  # the scores below come from the test split
        assert f"accuracy, f1 on the test split {test} (10 samples); the method and α were chosen on the " \
               "validation split:" in out
    else:
        assert f"accuracy, f1 on the validation split {validation} (10 samples); the same split chose the method" in out


@pytest.mark.parametrize("method,fragments", [
    ({"candidates": ["gradfix", "mean"]}, ["method.candidates[1]", "'mean'", "second gradient pass"]),
    ({"candidates": ["oracle"]}, ["method.candidates[0]", "'oracle'", "upper bound"]),
    ({"candidates": ["gradfx"]}, ["method.candidates[0]", "Did you mean 'gradfix'"]),
    ({"candidates": []}, ["method.candidates", "non-empty list"]),
    ({"candidates": ["naive", "naive"]}, ["method.candidates[1]", "listed twice"]),
    ({"candidates": [3]}, ["method.candidates[0]", "a mask name or a mapping"]),
    ({"candidates": [{"mask": "gradfix", "no_evidense": "keep"}]}, ["method.candidates[0]", "no_evidence"]),
    ({"mask": "gradfix"}, ["unknown key 'mask'", "'auto'"]),
])
def test_bad_auto_recipes(splits, method, fragments):
    trio, validation, _ = splits
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(auto_recipe(trio, validation, **method))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_auto_needs_an_evaluation_split(splits):
    trio, validation, _ = splits
    raw = auto_recipe(trio, validation)
    del raw["evaluation"]
    with pytest.raises(RecipeError, match=r"method: 'auto' picks the mask and α on a held-out split"):
        Recipe.from_dict(raw)
