"""Merges end to end on tiny T5 models: multi-task and multi-source recipes, vote sharing and caching, and
the output tensors against the formulas computed here from the checkpoints."""
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from gradfix_hf import Recipe, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import GradFixError, RecipeError
from gradfix_hf.transport import compute_recipe_votes, prepare
from gradfix_hf.votes import VotesFile

from conftest import fine_tune, recipe_dict
from gradfix_hf.quickstart.toy import sentiment_rows

transport_module = importlib.import_module("gradfix_hf.transport.recipe_votes")  # the package exports a function of that name


@pytest.fixture(scope="module")
def t5(trios, tmp_path_factory):
    """The T5 trio plus a second fine-tune of θ_A (another task vector) and a second source pre-training
    (θ_C, seed 2) with its fine-tune, for multi-task and multi-source merges."""
    trio = dict(trios("t5"))
    root = tmp_path_factory.mktemp("t5-more")
    tokenizer = transformers.AutoTokenizer.from_pretrained(trio["source"])
    rows = sentiment_rows(80, seed=11)
    second = fine_tune("t5", transformers.T5ForConditionalGeneration.from_pretrained(trio["source"]), tokenizer,
                       rows, seed=5, lr=8e-3)
    trio["second_finetuned"] = root / "second_finetuned"
    second.save_pretrained(trio["second_finetuned"])
    tokenizer.save_pretrained(trio["second_finetuned"])
    torch.manual_seed(2)
    other = transformers.T5ForConditionalGeneration(transformers.AutoConfig.from_pretrained(trio["source"]))
    trio["other_source"] = root / "other_source"
    other.save_pretrained(trio["other_source"])
    tokenizer.save_pretrained(trio["other_source"])
    tuned = fine_tune("t5", transformers.T5ForConditionalGeneration.from_pretrained(trio["other_source"]), tokenizer,
                      sentiment_rows(80, seed=3)[:60], seed=2)
    trio["other_finetuned"] = root / "other_finetuned"
    tuned.save_pretrained(trio["other_finetuned"])
    tokenizer.save_pretrained(trio["other_finetuned"])
    return trio


def data(trio, seed=0):
    return {"path": str(trio["train"]), "samples_per_class": 3, "seed": seed, "prompt": "review: {text}",
            "label_words": {0: "negative", 1: "positive"}}


def multi_task(trio, method, **extra):
    raw = recipe_dict("t5", trio)
    raw["method"] = method
    raw["models"] = {"target": str(trio["target"]), "source": str(trio["source"])}
    raw.pop("data")
    raw["tasks"] = [{"name": "first", "source_finetuned": str(trio["source_finetuned"]), "data": data(trio, 0)},
                    {"name": "second", "source_finetuned": str(trio["second_finetuned"]), "data": data(trio, 1)}]
    raw.update(extra)
    return raw


def multi_source(trio, method, **extra):
    raw = recipe_dict("t5", trio)
    raw["method"] = {"name": "multi_source", **method}
    raw["models"] = {"target": str(trio["target"])}
    raw["tasks"] = [{"name": "a", "source": str(trio["source"]), "source_finetuned": str(trio["source_finetuned"])},
                    {"name": "c", "source": str(trio["other_source"]),
                     "source_finetuned": str(trio["other_finetuned"])}]
    raw.update(extra)
    return raw


def weights(path: Path) -> dict:
    return load_file(str(next(path.glob("*.safetensors")))) if path.is_dir() else load_file(str(path))


class CountVotes:
    """Counts real vote computations (wraps the real function; nothing is faked)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = transport_module.compute_recipe_votes

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(transport_module, "compute_recipe_votes", counted)


def vote_files(raw, tmp_path):
    """Votes of every task, computed with the public stage-1 API and saved as files."""
    recipe = Recipe.from_dict(raw)
    paths = []
    for task in recipe.resolved_tasks():
        path = tmp_path / f"{task.name}.safetensors"
        compute_recipe_votes(prepare(recipe, task), progress=False).save(path)
        paths.append(path)
    return paths


def test_merge_then_mask_output_is_the_formula(t5, tmp_path):
    raw = multi_task(t5, {"name": "merge_then_mask", "alpha": 0.7})
    paths = vote_files(raw, tmp_path)
    for task, path in zip(raw["tasks"], paths):
        task["votes"] = str(path)
    result = transport(raw, tmp_path / "out", progress=False)
    out = weights(tmp_path / "out")
    source, first, second, target = (weights(t5[k]) for k in ("source", "source_finetuned", "second_finetuned",
                                                               "target"))
    votes = [VotesFile.load(p) for p in paths]
    assert result.report["per_tensor"]
    for name in result.report["per_tensor"]:
        merged = (first[name] - source[name]) + (second[name] - source[name])
        consensus = torch.sign(torch.sign(votes[0].votes[name].int()) + torch.sign(votes[1].votes[name].int()))
        keep = (torch.sign(merged) == consensus) & (consensus != 0)
        assert torch.allclose(out[name], target[name] + 0.7 * merged * keep, atol=1e-6), name
    assert [t["name"] for t in result.report["tasks"]] == ["first", "second"]
    assert result.report["method"]["name"] == "merge_then_mask"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "merge of 2 task vectors" in card and "second_finetuned" in card


def test_mask_then_merge_ties_computes_each_vote_once_and_caches_them(t5, tmp_path, monkeypatch):
    counter = CountVotes(monkeypatch)
    raw = multi_task(t5, {"name": "mask_then_merge", "merge": "ties", "density": 0.5},
                     votes_cache=str(tmp_path / "cache"))
    first = transport(raw, tmp_path / "one", progress=False)
    assert counter.calls == 2  # two tasks, two data sets: two votes
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    second = transport(raw, tmp_path / "two", progress=False)
    assert counter.calls == 2  # the cache served both
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.report["totals"] == second.report["totals"]
    # the same data twice: one vote for both tasks
    raw["tasks"][1]["data"] = raw["tasks"][0]["data"]
    raw.pop("votes_cache")
    transport(raw, tmp_path / "three", progress=False)
    assert counter.calls == 3


def test_multi_source_votes_exactly_once_and_matches_the_formula(t5, tmp_path, monkeypatch):
    counter = CountVotes(monkeypatch)
    raw = multi_source(t5, {"mask": "gradfix", "merge": "task_arithmetic", "alpha": 0.5})
    recipe = Recipe.from_dict(raw)
    shared = compute_recipe_votes(prepare(recipe), progress=False)
    counter.calls = 0
    result = transport(raw, tmp_path / "out", progress=False)
    assert counter.calls == 1
    out, target = weights(tmp_path / "out"), weights(t5["target"])
    pairs = [(weights(t5["source"]), weights(t5["source_finetuned"])),
             (weights(t5["other_source"]), weights(t5["other_finetuned"]))]
    for name in result.report["per_tensor"]:
        s = torch.sign(shared.votes[name].int())
        delta = sum((ft[name] - src[name]) * ((torch.sign(ft[name] - src[name]) == s) & (s != 0))
                    for src, ft in pairs)
        assert torch.allclose(out[name], target[name] + 0.5 * delta, atol=1e-6), name
    assert result.report["tasks"][1]["votes"]["data_fingerprint"] == result.report["tasks"][0]["votes"]["data_fingerprint"]


def test_original_ties_trims_over_the_whole_task_vector(t5, tmp_path):
    raw = multi_task(t5, {"name": "ties", "variant": "original", "density": 0.1, "alpha": 1.0})
    result = transport(raw, tmp_path / "out", progress=False)
    out, target, source = weights(tmp_path / "out"), weights(t5["target"]), weights(t5["source"])
    names = list(result.report["per_tensor"])
    taus = [{n: weights(t5[k])[n] - source[n] for n in names} for k in ("source_finetuned", "second_finetuned")]
    thresholds = []
    for tau in taus:  # the k-th largest magnitude over every transported coordinate, by sorting
        values = torch.cat([t.abs().flatten() for t in tau.values()])
        thresholds.append(values.sort(descending=True).values[math.ceil(values.numel() * 0.1) - 1])
    for name in names:
        trimmed = torch.stack([torch.where(tau[name].abs() >= th, tau[name], 0) for tau, th in zip(taus, thresholds)])
        elected = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
        merged = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
        assert torch.allclose(out[name], target[name] + merged, atol=1e-6), name
    kept = result.report["totals"]["kept_fraction"]
    assert 0.1 <= kept <= 0.2  # each vector keeps ~10 %, the union of agreeing values ≤ 20 %


def test_task_arithmetic_and_cli_dry_run_of_a_merge(t5, tmp_path, capsys):
    raw = multi_task(t5, {"name": "task_arithmetic", "alpha": 0.5})
    raw["tasks"][1]["weight"] = 0.5
    path = tmp_path / "merge.yaml"
    path.write_text(json.dumps(raw))
    assert main(["run", str(path), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.split("\ndry run")[0])
    assert set(plan["tasks"]) == {"first", "second"} and plan["method"]["name"] == "task_arithmetic"
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out, target, source = weights(tmp_path / "out"), weights(t5["target"]), weights(t5["source"])
    first, second = weights(t5["source_finetuned"]), weights(t5["second_finetuned"])
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    expected = target[name] + 0.5 * ((first[name] - source[name]) + 0.5 * (second[name] - source[name]))
    assert torch.allclose(out[name], expected, atol=1e-6)
    # the written recipe reads back as the same recipe
    again = Recipe.from_yaml(tmp_path / "out" / "gradfix_recipe.yaml")
    assert again.method == Recipe.from_dict(raw).method and len(again.tasks) == 2


# ----------------------------------------------------------------------------------------------- bad input
def test_single_task_method_with_two_tasks(t5):
    with pytest.raises(RecipeError, match=r"tasks: method 'gradfix' takes exactly 1 task vector\(s\), the recipe gives 2"):
        Recipe.from_dict(multi_task(t5, {"name": "gradfix"}))


def test_multi_source_needs_one_data_set(t5):
    raw = multi_source(t5, {})
    raw["tasks"][1]["data"] = data(t5, seed=4)
    with pytest.raises(RecipeError, match=r"tasks\[1\]\.data: method 'multi_source' votes once .* differs from tasks\[0\]"):
        Recipe.from_dict(raw)


@pytest.mark.parametrize("change,message", [
    (lambda r: r["tasks"][0].update(source_finetune="x"), r"tasks\[0\]: unknown key 'source_finetune'\. Did you mean 'source_finetuned'\?"),
    (lambda r: r["models"].update(source_finetuned="x"), r"models\.source_finetuned: with a tasks list, set it per task"),
    (lambda r: r["models"].pop("source"), r"tasks\[0\]\.source: missing"),
    (lambda r: r["tasks"][1].update(name="first"), r"the name 'first' is used twice"),
    (lambda r: r.update(tasks={"name": "x"}), r"tasks: expected a list"),
    (lambda r: r["tasks"][1].pop("data"), r"needs labelled samples for tasks\[1\]"),
    (lambda r: r["method"].update(mask="oracle"), r"tasks\[0\]\.target_finetuned: mask 'oracle' needs"),
    (lambda r: r.update(evaluation={"split": "test"}), r"evaluation: held-out scores are computed for single-task"),
    (lambda r: [t.update(weight=w) for t, w in zip(r["tasks"], (1.0, -1.0))] and r["method"].update(normalize=True),
     r"method\.normalize divides by the sum of the task weights, which is 0"),
])
def test_bad_merge_recipes(t5, change, message):
    raw = multi_task(t5, {"name": "merge_then_mask"})
    change(raw)
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(raw)


def test_fine_tunes_of_different_architectures_are_refused_before_votes(t5, trios, tmp_path, monkeypatch):
    counter = CountVotes(monkeypatch)
    raw = multi_task(t5, {"name": "merge_then_mask"})
    raw["tasks"][1]["source_finetuned"] = str(trios("gpt2")["source_finetuned"])
    with pytest.raises(GradFixError, match="model_type 'gpt2'"):
        transport(raw, tmp_path / "out", progress=False)
    assert counter.calls == 0 and not (tmp_path / "out").exists()


def test_one_votes_file_for_a_multi_task_merge_is_refused(t5, tmp_path):
    raw = multi_task(t5, {"name": "merge_then_mask"})
    with pytest.raises(RecipeError,
                       match=r"one votes file was given \(--votes, votes= from Python\).*tasks\[i\]\.votes"):
        transport(raw, tmp_path / "out", votes=tmp_path / "v.safetensors", progress=False)


def test_cli_votes_of_one_task_and_methods_listing(t5, tmp_path, capsys):
    path = tmp_path / "merge.yaml"
    path.write_text(json.dumps(multi_task(t5, {"name": "merge_then_mask"})))
    assert main(["votes", str(path), "-o", str(tmp_path / "v.safetensors")]) == 2
    assert "the recipe has 2 tasks; choose one with --task (first, second)" in capsys.readouterr().err
    assert main(["votes", str(path), "-o", str(tmp_path / "v.safetensors"), "--task", "thrid"]) == 2
    assert "--task 'thrid': no such task" in capsys.readouterr().err
    assert main(["votes", str(path), "-o", str(tmp_path / "v.safetensors"), "--task", "second", "--no-progress"]) == 0
    votes = VotesFile.load(tmp_path / "v.safetensors")
    recipe = Recipe.from_dict(multi_task(t5, {"name": "merge_then_mask"}))
    assert votes.metadata["data_fingerprint"] == prepare(recipe, recipe.resolved_tasks()[1]).samples.fingerprint
    capsys.readouterr()
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["methods"]["ties"]["parameters"]["variant"]["choices"] == ["paper", "original"]
    assert listed["methods"]["multi_source"]["shared_vote"] is True
    assert main(["methods"]) == 0
    assert "merge_then_mask  (GradFix Merge-then-Mask; 1+ task vectors)" in capsys.readouterr().out
