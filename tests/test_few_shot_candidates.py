"""Fair baselines as candidates of ``method: auto``: few-shot fine-tuning with the vote's compute (one pass over the
vote samples, lr chosen on validation), ten times it, and GradFix followed by that fine-tune (``method.few_shot``)."""
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import recipe_dict
from gradfix_hf import Recipe, sweep, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import RecipeError
from gradfix_hf.metrics import MetricSet, score_model
from gradfix_hf.plan import TARGET, load_base_model
from gradfix_hf.recipe import DEFAULT_FEW_SHOT_LRS, FewShotStage
from gradfix_hf.transport import few_shot_finetune, prepare

LRS = [1e-4, 1e-3, 1e-2]


@pytest.fixture(scope="module")
def splits(bert_splits):
    return bert_splits


def auto_recipe(trio, validation, candidates, test=None):
    evaluation = {"path": str(validation), "alphas": [0.5, 1.0], "few_shot_steps": 0, "few_shot_lrs": LRS}
    if test is not None:
        evaluation["test_path"] = str(test)
    raw = recipe_dict("bert", trio, evaluation=evaluation)
    raw["method"] = {"name": "auto", "candidates": candidates}
    return raw


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_few_shot_alone_writes_theta_b_fine_tuned_with_the_votes_compute(splits, tmp_path):
    trio, validation, _ = splits
    raw = auto_recipe(trio, validation, ["few-shot"])
    result = transport(raw, tmp_path / "auto", progress=False)
    auto = result.report["auto"]
    entry = auto["candidates"]["few-shot"]
    assert auto["key"] == "few-shot" and auto["alpha"] is None and entry["best_lr"] in LRS
    assert set(entry["validation"]) == {str(lr) for lr in LRS}
    assert entry["best_validation"] == max(entry["validation"].values())
    assert auto["few_shot"] == {"passes": 1, "lr": entry["best_lr"]}
    written = yaml.safe_load((result.output_dir / "gradfix_recipe.yaml").read_text())["method"]
    assert written["mask"] == "none" and written["few_shot"] == auto["few_shot"]

    # the same fine-tune by hand: θ_B (with θ_A^ft's head, as every method gets it), AdamW at the chosen lr, one
    # pass over the N vote samples in batches of 8
    prepared = prepare(Recipe.from_dict(raw))
    n = len(prepared.examples)
    assert n == 6  # 3 samples per class
    target = load_base_model(prepared.plan)
    tuned = few_shot_finetune(target, prepared.objective, prepared.examples, prepared.plan.transported,
                              steps=math.ceil(n / 8), lr=entry["best_lr"], seed=0, batch_size=8)
    out = weights(result.output_dir)
    tuned_params = dict(tuned.named_parameters())
    moved = 0
    for name in prepared.plan.transported:
        torch.testing.assert_close(out[name], tuned_params[name].detach(), rtol=0, atol=1e-6)
        moved += int(not torch.equal(out[name], prepared.plan.tensor(TARGET, name)))
    assert moved > 0  # it trained
    metrics = MetricSet(["accuracy", "f1"], prepared.objective)
    assert score_model(prepared.objective, tuned, prepared.eval_samples, metrics)["accuracy"] == pytest.approx(
        entry["best_validation"])
    card = (result.output_dir / "README.md").read_text()
    assert "fine-tuned on the vote samples: few-shot FT (1 pass, lr" in card

    # the resolved recipe reruns (fine-tuning again at the chosen lr) to the same bytes
    again = transport(result.output_dir / "gradfix_recipe.yaml", tmp_path / "again", progress=False)
    theirs = weights(again.output_dir)
    assert out.keys() == theirs.keys() and all(torch.equal(out[k], theirs[k]) for k in out)


def test_gradfix_then_few_shot_starts_from_gradfix_at_its_best_alpha(splits, tmp_path):
    trio, validation, test = splits
    raw = auto_recipe(trio, validation, ["gradfix+few-shot", {"mask": "gradfix", "few_shot": {"passes": 10}}], test)
    result = transport(raw, tmp_path / "auto", progress=False)
    auto = result.report["auto"]
    assert set(auto["candidates"]) == {"gradfix+few-shot", "gradfix+few_shot=10"}  # the start is no candidate
    alphas = {c["best_alpha"] for c in auto["candidates"].values()}
    assert len(alphas) == 1 and alphas <= {0.5, 1.0}  # both start from GradFix at its one best α
    assert auto["label"].startswith("GradFix (gradfix) at α")
    plain = recipe_dict("bert", trio, evaluation={"path": str(validation), "few_shot_steps": 0})
    plain["method"] = {"name": "gradfix", "mask": "gradfix", "alpha": auto["alpha"], "few_shot": auto["few_shot"]}
    rerun = transport(plain, tmp_path / "plain", progress=False)
    ours, theirs = weights(result.output_dir), weights(rerun.output_dir)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the cached fine-tune is the one a plain run makes
    merged = recipe_dict("bert", trio, evaluation={"path": str(validation), "few_shot_steps": 0})
    merged["method"] = {"name": "gradfix", "mask": "gradfix", "alpha": auto["alpha"]}
    without = weights(transport(merged, tmp_path / "merged", progress=False).output_dir)
    assert any(not torch.equal(ours[k], without[k]) for k in ours)
    # the run's table (on the test split) labels the method with its fine-tune
    rows = {r["method"]: r for r in result.evaluation["rows"]}
    assert any("few-shot FT" in r["model"] for r in rows.values()) and "naive" in rows


def test_sweep_compares_the_fair_baselines_with_the_merges(splits, tmp_path):
    trio, validation, test = splits
    raw = auto_recipe(trio, validation, ["naive", "gradfix", "few-shot", "few-shot-10x", "gradfix+few-shot"], test)
    result = sweep(raw, progress=False)
    assert list(result.methods) == ["naive", "gradfix", "few-shot", "few-shot-10x", "gradfix+few-shot"]
    for key in ("few-shot", "few-shot-10x", "gradfix+few-shot"):
        entry = result.methods[key]
        assert entry["best_lr"] in LRS and "test" in entry
    assert result.methods["few-shot-10x"]["few_shot"]["passes"] == 10
    assert result.methods["gradfix+few-shot"]["best_alpha"] == result.methods["gradfix"]["best_alpha"]
    best = max(e["best_validation"] for e in result.methods.values())
    assert result.chosen["validation"] == best
    table = result.to_markdown()
    assert "θ_B few-shot FT (10 passes, lr" in table and "method: auto chooses" in table
    pytest.importorskip("matplotlib")
    assert result.plot(tmp_path / "sweep.png").stat().st_size > 0


def test_few_shot_stage_steps_and_parsing():
    assert FewShotStage(passes=1).steps(6) == 1 and FewShotStage(passes=10).steps(6) == 10
    assert FewShotStage(passes=2, batch_size=4).steps(9) == 6
    assert FewShotStage.parse(3) == FewShotStage(passes=3)
    assert FewShotStage.parse({"passes": 1, "lr": "1e-4"}).lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    text = "evaluation: {few_shot_lrs: [1e-3, 1e-5]}\nmethod: {name: auto, candidates: [naive, few-shot]}\n"
    data = yaml.safe_load(text)
    assert data["evaluation"]["few_shot_lrs"] == ["1e-3", "1e-5"]
    from gradfix_hf.recipe import EvaluationConfig, MethodConfig
    assert EvaluationConfig(**data["evaluation"]).few_shot_lrs == (1e-5, 1e-3)
    assert EvaluationConfig().few_shot_lrs == DEFAULT_FEW_SHOT_LRS
    assert MethodConfig.parse(data["method"]).to_dict()["candidates"] == ["naive", "few-shot"]


@pytest.mark.parametrize("method, evaluation, message", [
    ({"name": "gradfix", "few_shot": 1}, {}, "method.few_shot.lr: method 'gradfix' fine-tunes at a given"),
    ({"name": "auto", "few_shot": {"passes": 1, "lr": 1e-4}}, {}, "method.few_shot: with method auto, list"),
    ({"name": "auto", "candidates": ["none"]}, {}, "method.candidates[0]: mask 'none' is θ_B itself"),
    ({"name": "auto", "candidates": [{"mask": "gradfix", "few_shot": 0}]}, {},
     "method.candidates[0].few_shot.passes: an integer >= 1, got 0"),
    ({"name": "auto", "candidates": [{"mask": "gradfix", "few_shot": {"pases": 2}}]}, {},
     "method.candidates[0].few_shot: unknown key 'pases'. Did you mean 'passes'?"),
    ({"name": "auto", "candidates": ["few-shot", {"mask": "none", "few_shot": 1}]}, {}, "is listed twice"),
    ({"name": "gradfix", "few_shot": {"passes": 1, "lr": -1}}, {}, "method.few_shot.lr: a positive number, got -1"),
    ({"name": "auto", "candidates": ["few-shot"]}, {"few_shot_lrs": []}, "evaluation.few_shot_lrs: a non-empty list"),
    ({"name": "auto", "candidates": ["few-shot"]}, {"few_shot_lrs": ["fast"]},
     "evaluation.few_shot_lrs[0]: a positive number, got 'fast'"),
])
def test_bad_few_shot_settings_are_refused_by_key(splits, method, evaluation, message):
    trio, validation, _ = splits
    raw = recipe_dict("bert", trio, evaluation={"path": str(validation), **evaluation})
    raw["method"] = method
    with pytest.raises(RecipeError) as error:
        Recipe.from_dict(raw)
    assert message in str(error.value)


def test_a_few_shot_stage_without_vote_samples_or_with_two_tasks_fails_before_any_vote(splits, tmp_path, capsys):
    trio, validation, _ = splits
    raw = recipe_dict("bert", trio)
    data = raw.pop("data")
    raw["models"].pop("source_finetuned")
    raw["tasks"] = [{"name": name, "source_finetuned": str(trio["source_finetuned"]), "data": {**data, "seed": seed}}
                    for seed, name in enumerate(("first", "second"))]
    raw["method"] = {"name": "task_arithmetic", "few_shot": {"passes": 1, "lr": 1e-4}}
    recipe_file = tmp_path / "two.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    assert main(["run", str(recipe_file), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "method.few_shot: fine-tuning the merge needs one task's vote samples; this recipe has 2 tasks" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(RecipeError, match="a sweep scores merges over α"):
        sweep({**recipe_dict("bert", trio, evaluation={"path": str(validation)}),
               "method": {"name": "gradfix", "few_shot": {"passes": 1, "lr": 1e-4}}}, progress=False)
    report = json.dumps(Recipe.from_dict(auto_recipe(trio, validation, ["naive", "few-shot"])).to_dict())
    assert '"few-shot"' in report
