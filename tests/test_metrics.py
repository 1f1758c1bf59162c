"""The metrics shipped as `evaluate` modules: they load from the package without the Hub and compute what a
hand count gives; a seq2seq run adds exact match of the generated label; bad metric names fail clearly."""
import socket

import pytest
import torch
import yaml

from conftest import recipe_dict
from gradfix_hf import Recipe, prepare
from gradfix_hf.errors import RecipeError
from gradfix_hf.plan import load_base_model
from gradfix_hf.metrics import (BUILTIN_METRICS, METRICS_DIR, MetricSet, clear_metric_cache, collect_predictions,
                                load_metric, metric_source, score_model)


@pytest.fixture
def no_network(monkeypatch):
    """The Hub unreachable (any connection attempt fails) and not declared offline to `evaluate`."""
    import evaluate

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    clear_metric_cache()
    yield
    clear_metric_cache()


# [0, 1] vs [0, 0]; ["a b", "b c"] vs ["a b", "c"] (ROUGE-L: 1, and LCS 1 of 2 and 1 tokens: F = 2/3)
EXPECTED = {"accuracy": 0.5, "f1": 0.0, "exact_match": 0.5, "rouge": (1 + 2 / 3) / 2}


@pytest.mark.parametrize("name", BUILTIN_METRICS)

def test_builtin_metrics_load_from_the_package_with_the_hub_unreachable(no_network, name):
    assert metric_source(name) == str(METRICS_DIR / name) and (METRICS_DIR / name / f"{name}.py").is_file()
    module = load_metric(name)
    assert module.name == name
    text = name in ("exact_match", "rouge")
    predictions, references = (["a b", "b c"], ["a b", "c"]) if text else ([0, 1], [0, 0])
    result = module.compute(predictions=predictions, references=references)
    key = "rougeL" if name == "rouge" else name  # ROUGE-L's F-measure, under rouge-score's name
    assert set(result) == {key} and result[key] == pytest.approx(EXPECTED[name])


def test_a_hub_metric_that_cannot_be_loaded_is_a_clear_error_before_any_model_is_read(no_network):
    raw = {"models": {"target": "t", "source": "s", "source_finetuned": "f"}, "data": {"path": "d.jsonl"},
           "evaluation": {"metrics": ["accuracy", "precision"]}}
    recipe = Recipe.from_dict(raw)
    assert recipe.evaluation.metrics == ("accuracy", "precision")  # reading a recipe loads nothing
    with pytest.raises(RecipeError, match=r"evaluation\.metrics: 'precision' is not a built-in metric .accuracy, "
                                          r"f1, exact_match, rouge.; loading it runs its script .* trust_remote_code: true"):
        prepare(recipe)  # the models "t", "s", "f" do not exist: the metric is checked first
    with pytest.raises(RecipeError, match=r"evaluation\.metrics: cannot load metric 'precision'.*accuracy, f1, "
                                          r"exact_match.*needs network"):
        prepare(Recipe.from_dict({**raw, "trust_remote_code": True}))


@pytest.mark.parametrize("metrics,message", [
    ([], "a non-empty list of metric names"), ([1], "a non-empty list of metric names"),
    (["f1", "f1"], "'f1' is listed twice")])
def test_bad_metric_lists_are_rejected_when_the_recipe_is_read(metrics, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({"models": {"target": "t", "source": "s", "source_finetuned": "f"},
                          "data": {"path": "d.jsonl"}, "evaluation": {"metrics": metrics}})


METRIC_SCRIPT = """
import pathlib
pathlib.Path({marker!r}).write_text("the metric script ran")  # evaluate runs a copy: the marker path is absolute
raise ImportError("a script that is not a metric")
"""


def test_a_metric_script_runs_only_with_trust_remote_code_and_never_under_dry_run(tmp_path, capsys):
    """A path in evaluation.metrics is code: refused without the flag, not even loaded by a dry run."""
    from gradfix_hf.cli import main

    script = tmp_path / "evil" / "evil.py"
    script.parent.mkdir()
    script.write_text(METRIC_SCRIPT.format(marker=str(script.parent / "EXECUTED")))
    raw = {"models": {"target": "t", "source": "s", "source_finetuned": "f"}, "data": {"path": "d.jsonl"},
           "evaluation": {"metrics": [str(script)]}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["run", str(recipe), "--dry-run"]) == 2
    assert f"'{script}' is not a built-in metric" in capsys.readouterr().err
    recipe.write_text(yaml.safe_dump({**raw, "trust_remote_code": True}))
    assert main(["run", str(recipe), "--dry-run"]) == 2  # fails later, on the models that do not exist
    assert "models." in capsys.readouterr().err
    assert not (script.parent / "EXECUTED").exists()  # no code ran, trusted or not
    clear_metric_cache()
    with pytest.raises(RecipeError, match="cannot load metric"):
        prepare(Recipe.from_dict({**raw, "trust_remote_code": True}))
    assert (script.parent / "EXECUTED").exists()  # with the flag, outside a dry run, evaluate runs it


def test_recipe_metrics_default_and_round_trip():
    raw = {"models": {"target": "t", "source": "s", "source_finetuned": "f"}, "data": {"path": "d.jsonl"},
           "evaluation": {"metrics": ["f1", "accuracy"], "few_shot_lr": "1e-4"}}
    recipe = Recipe.from_dict(raw)
    assert recipe.evaluation.metrics == ("f1", "accuracy") and recipe.evaluation.few_shot_lr == 1e-4
    assert Recipe.from_dict(recipe.to_dict()).evaluation == recipe.evaluation
    assert Recipe.from_dict({**raw, "evaluation": {}}).evaluation.metrics == ("accuracy", "f1")


def test_f1_equals_a_hand_computation():
    f1 = load_metric("f1")
    # three classes: per-class F1 = 2·TP / (2·TP + FP + FN), macro = their mean
    references = [0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 1, 1, 2, 2, 2, 0]
    class_f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 1)]
    assert f1.compute(predictions=predictions, references=references, num_labels=3)["f1"] == pytest.approx(
        sum(class_f1) / 3)
    # two classes: the binary F1 of class 1 (TP 2, FP 1, FN 1), not the macro mean
    references, predictions = [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]
    assert f1.compute(predictions=predictions, references=references, num_labels=2)["f1"] == pytest.approx(4 / 6)
    macro = (4 / 6 + 2 * 1 / (2 * 1 + 1 + 1)) / 2
    assert f1.compute(predictions=predictions, references=references, average="macro")["f1"] == pytest.approx(macro)
    # a binary task whose split shows no positive at all: zero denominator → 0.0
    assert f1.compute(predictions=[0, 0], references=[0, 0], num_labels=2)["f1"] == 0.0


def test_exact_match_on_strings():
    exact_match = load_metric("exact_match")
    predictions, references = [" positive ", "Negative", "neg", "positive."], ["positive", "negative", "negative",
                                                                                "positive"]
    assert exact_match.compute(predictions=predictions, references=references)["exact_match"] == 1 / 4
    assert exact_match.compute(predictions=predictions, references=references, ignore_case=True,
                               ignore_punctuation=True)["exact_match"] == 3 / 4
    assert exact_match.compute(predictions=[" a"], references=["a"], strip=False)["exact_match"] == 0.0


def test_scores_of_a_classifier_match_a_hand_count(trios):
    trio = trios("bert")
    prepared = prepare(Recipe.from_dict(recipe_dict("bert", trio, evaluation={"path": str(trio["test"]),
                                                                              "metrics": ["f1", "accuracy"]})))
    model = load_base_model(prepared.plan)
    metrics = MetricSet(prepared.recipe.evaluation.metrics, prepared.objective)
    assert metrics.names == ("f1", "accuracy")  # no exact match for a classifier
    samples = prepared.eval_samples
    scores = score_model(prepared.objective, model, samples, metrics)
    assert list(scores) == ["f1", "accuracy"]
    with torch.no_grad():
        predicted = [int(model(**prepared.objective.encode(row, 0)).logits.argmax()) for row in samples.rows]
    gold = samples.labels
    tp = sum(p == y == 1 for p, y in zip(predicted, gold))
    fp = sum(p == 1 and y == 0 for p, y in zip(predicted, gold))
    fn = sum(p == 0 and y == 1 for p, y in zip(predicted, gold))
    assert scores["accuracy"] == pytest.approx(sum(p == y for p, y in zip(predicted, gold)) / len(gold))
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)


def test_seq2seq_reports_exact_match_of_the_generated_label(trios):
    trio = trios("t5")
    prepared = prepare(Recipe.from_dict(recipe_dict("t5", trio, evaluation={"path": str(trio["test"]),
                                                                            "max_samples": 8})))
    model = load_base_model(prepared.plan)
    metrics = MetricSet(prepared.recipe.evaluation.metrics, prepared.objective)
    assert metrics.names == ("accuracy", "f1", "exact_match")
    samples = prepared.eval_samples
    scores = score_model(prepared.objective, model, samples, metrics)
    tokenizer, words = prepared.objective.tokenizer, prepared.objective.labels.names
    longest = max(len(tokenizer(w).input_ids) for w in words)
    matches = 0
    with torch.no_grad():  # one row at a time, no padding: greedy decoding of the label
        for row, label in zip(samples.rows, samples.labels):
            enc = tokenizer(prepared.objective.text_of(row), return_tensors="pt")
            out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=longest)
            matches += tokenizer.decode(out[0], skip_special_tokens=True).strip() == words[label]
    assert scores["exact_match"] == pytest.approx(matches / len(samples))
    predictions = collect_predictions(prepared.objective, model, samples)
    assert scores["accuracy"] == pytest.approx(
        sum(p == y for p, y in zip(predictions.labels, samples.labels)) / len(samples))
