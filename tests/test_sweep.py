"""α chosen on validation, reported on test: the sweep against independent full runs at the chosen α; every
metric, the few-shot fine-tuning baseline against one AdamW step done by hand, the plot and the model card."""
import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import recipe_dict
from gradfix_hf import Recipe, prepare, sweep, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import GradFixError, RecipeError
from gradfix_hf.transport import few_shot_finetune
from gradfix_hf.plan import load_base_model
from gradfix_hf.metrics import MetricSet, score_model
from gradfix_hf.runtime.progress import ENVIRONMENT as NO_PROGRESS_ENVIRONMENT
from gradfix_hf.sweep import require_matplotlib

transport_module = importlib.import_module("gradfix_hf.transport.recipe_votes")


@pytest.fixture(scope="module")
def splits(bert_splits):
    return bert_splits


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
    assert result.metric == "accuracy" and result.metrics == ["accuracy", "f1"]  # the default metrics
    for entry in [result.zero_shot, result.few_shot, *result.methods.values()]:
        assert set(entry["validation_scores" if "best_alpha" not in entry else "best_validation_scores"]) == \
            {"accuracy", "f1"} and set(entry["test_scores"]) == {"accuracy", "f1"}
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
        which = "validation" if split == validation else "test"
        assert rows["zero-shot"] == pytest.approx(result.zero_shot[which])
        assert rows["few-shot"] == pytest.approx(result.few_shot[which])  # the same baseline in a run's table
    table = result.to_markdown()
    assert "GradFix (gradfix)" in table and "test accuracy" in table and "| validation f1 |" in table
    assert "| θ_B few-shot FT (1 step) | – |" in table


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
                 "--markdown", str(tmp_path / "s.md"), "--plot", str(tmp_path / "s.png"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "α chosen on" in out and "| GradFix (gradfix) |" in out and f"wrote {tmp_path / 's.png'}" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["alphas"] == [0.3, 0.6, 0.9] and "gradfix" in saved["methods"]
    assert saved["few_shot"]["steps"] == 1 and saved["few_shot"]["n_samples"] == 6
    assert (tmp_path / "s.md").read_text().startswith("| method |")
    png = (tmp_path / "s.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")  # a PNG that decodes to an image of the figure's size
    from matplotlib.image import imread

    height, width, _ = imread(tmp_path / "s.png").shape
    assert (width, height) == (768, 528)


#: what a progress bar leaves in a captured stream (tqdm writes to stderr even when it is not a terminal)
BAR = re.compile(r"\d+%\||it/s|s/it|α grid")


def test_sweep_warns_once_and_no_progress_silences_every_bar(splits, tmp_path):
    """As a user runs it (a fresh process): each grid-edge warning once, on stderr; a bar over the α grid; with
    --no-progress no bar at all (ours, datasets', the Hub's, transformers')."""
    trio, validation, test = splits
    raw = sweep_recipe(trio, validation, test)
    raw["evaluation"]["few_shot_steps"] = 0
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k not in NO_PROGRESS_ENVIRONMENT}  # as a shell would have it
    runs = {}
    for flag in ([], ["--no-progress"]):
        done = subprocess.run([sys.executable, "-m", "gradfix_hf", "sweep", str(path), "--alphas", "0.4,0.8", *flag],
                              capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[bool(flag)] = done
    for done in runs.values():  # two α values: every method's best is on the grid's edge, one warning each
        warnings = re.findall(r"the best α \([\d.]+\) is the grid's (?:smallest|largest) value",
                              done.stdout + done.stderr)
        assert len(warnings) == 3, done.stdout + done.stderr  # naive, gradfix, oracle: once each
        assert "| GradFix (gradfix) |" in done.stdout
    assert "α grid" in runs[False].stderr  # progress over the grid (3 methods × 2 α)
    assert not BAR.search(runs[True].stderr) and not BAR.search(runs[True].stdout), runs[True].stderr[-3000:]


def test_plot_without_matplotlib_is_a_clear_error_before_any_work(splits, tmp_path, capsys, monkeypatch):
    trio, validation, test = splits
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without matplotlib gives
    with pytest.raises(GradFixError, match=r"pip install 'gradfix_hf\[plot\]'"):
        require_matplotlib()
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(sweep_recipe(trio, validation, test)))
    calls = []
    monkeypatch.setattr(transport_module, "compute_recipe_votes", lambda *a, **k: calls.append(1))
    assert main(["sweep", str(path), "--plot", str(tmp_path / "s.png"), "--no-progress"]) == 2
    assert "gradfix_hf[plot]" in capsys.readouterr().err and not calls and not (tmp_path / "s.png").exists()


def test_few_shot_baseline_is_one_adamw_step_on_the_vote_samples(splits):
    trio, validation, test = splits
    raw = sweep_recipe(trio, validation, test)
    prepared = prepare(Recipe.from_dict(raw))
    transported = prepared.plan.transported
    theta_b = load_base_model(prepared.plan)
    before = {name: p.detach().clone() for name, p in theta_b.named_parameters()}
    tuned = few_shot_finetune(theta_b, prepared.objective, prepared.examples, transported)
    # by hand: AdamW (lr 1e-5) over the transported tensors, one step on the mean loss of the 6 vote samples
    hand = load_base_model(prepared.plan)
    params = dict(hand.named_parameters())
    optimizer = torch.optim.AdamW([params[name] for name in transported], lr=1e-5)
    torch.stack([hand(**example).loss for example in prepared.examples]).mean().backward()
    optimizer.step()
    tuned_params = dict(tuned.named_parameters())
    assert all(torch.equal(p, before[name]) for name, p in theta_b.named_parameters())  # the caller's copy
    moved = sum(int((tuned_params[n] != before[n]).sum()) for n in transported)
    assert moved > 0.9 * sum(before[n].numel() for n in transported)
    for name in transported:  # an AdamW first step moves each coordinate by about lr: agree far below that
        assert torch.allclose(tuned_params[name], params[name].detach(), rtol=0, atol=1e-7), name
    for name in set(before) - set(transported):  # the copied head is not trained
        assert torch.equal(tuned_params[name], before[name])
    # the sweep's baseline scores are those of the hand-made step, on both splits
    result = sweep(raw, alphas=[0.5, 1.0], progress=False)
    metrics = MetricSet(prepared.recipe.evaluation.metrics, prepared.objective)
    for key, samples in (("validation_scores", prepared.eval_samples), ("test_scores", prepared.test_samples)):
        assert result.few_shot[key] == pytest.approx(score_model(prepared.objective, hand, samples, metrics))
    assert result.few_shot["label"] == "θ_B few-shot FT (1 step)"


def test_few_shot_options_more_steps_batches_and_off(splits):
    trio, validation, test = splits
    prepared = prepare(Recipe.from_dict(sweep_recipe(trio, validation, test)))
    model, transported = load_base_model(prepared.plan), prepared.plan.transported
    name = transported[0]

    def tuned(**options):
        return dict(few_shot_finetune(model, prepared.objective, prepared.examples, transported, **options)
                    .named_parameters())[name]

    # gradient accumulation over micro-batches is the same step as one forward of the whole batch
    torch.testing.assert_close(tuned(steps=1, micro_batch_size=2), tuned(steps=1), rtol=0, atol=1e-7)
    assert len(prepared.examples) > 2  # the micro-batches really split the batch
    three = tuned(steps=3, batch_size=2, seed=5)
    assert torch.equal(three, tuned(steps=3, batch_size=2, seed=5))  # deterministic
    assert not torch.equal(three, tuned(steps=3, batch_size=2, seed=6))  # the seed draws the batches
    assert not torch.equal(three, tuned(steps=1))
    raw = sweep_recipe(trio, validation, test)
    raw["evaluation"] = {**raw["evaluation"], "few_shot_steps": 0}
    assert sweep(raw, alphas=[1.0], progress=False).few_shot is None
    with pytest.raises(RecipeError, match=r"evaluation\.few_shot_steps: an integer >= 0"):
        Recipe.from_dict({**raw, "evaluation": {"few_shot_steps": -1}})
    with pytest.raises(RecipeError, match=r"evaluation\.few_shot_lr: a positive number"):
        Recipe.from_dict({**raw, "evaluation": {"few_shot_lr": 0}})


def test_model_card_has_the_table_with_every_metric(splits, tmp_path):
    trio, validation, test = splits
    raw = sweep_recipe(trio, validation, test)
    raw["evaluation"] = {"path": str(validation), "metrics": ["f1", "accuracy", "exact_match"]}
    result = transport(raw, tmp_path / "out", progress=False)
    evaluation = result.evaluation
    assert evaluation["metric"] == "f1" and evaluation["metrics"] == ["f1", "accuracy", "exact_match"]
    assert [r["method"] for r in evaluation["rows"]] == ["zero-shot", "few-shot", "naive", "gradfix", "oracle"]
    card = (result.output_dir / "README.md").read_text()
    assert "| model | α | f1 | accuracy | exact_match |" in card
    for row in evaluation["rows"]:
        scores = row["scores"]
        assert row["score"] == scores["f1"] and scores["exact_match"] == scores["accuracy"]  # label names match
        alpha = "–" if row["alpha"] is None else f"{row['alpha']:g}"
        assert (f"| {row['model']} | {alpha} | {scores['f1']:.4f} | {scores['accuracy']:.4f} | "
                f"{scores['exact_match']:.4f} |") in card


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
