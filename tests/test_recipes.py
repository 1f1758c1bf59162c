"""The recipes in recipes/ run as written, with their Hub models and data swapped for tiny local ones.

Only model references, data locations/columns and output paths are replaced; the method section and every
other setting are the recipe's own, so a recipe that stops matching the code fails here.
"""
from pathlib import Path

import pytest
import transformers
import yaml

from gradfix_hf import Recipe
from gradfix_hf.cli import main
from gradfix_hf.output_folder import read_report

from conftest import fine_tune
from gradfix_hf.quickstart.toy import sentiment_rows

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml") if p.name != "quickstart.yaml")


@pytest.fixture(scope="module")
def local_models(trios, tmp_path_factory):
    """Hub id → local tiny model: BERT-base → θ_A, MultiBERTs → θ_B, each GLUE fine-tune → a fine-tune of θ_A."""
    trio = trios("bert")
    root = tmp_path_factory.mktemp("recipe-models")
    tokenizer = transformers.AutoTokenizer.from_pretrained(trio["source"])
    extra = {}
    for seed, name in ((7, "rte"), (8, "mrpc")):
        model = transformers.BertForSequenceClassification.from_pretrained(trio["source"], num_labels=2)
        fine_tune("bert", model, tokenizer, sentiment_rows(60, seed=seed), steps=4, seed=seed)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        extra[name] = root / name
    return {
        "google-bert/bert-base-uncased": trio["source"], "google/multiberts-seed_1": trio["target"],
        "textattack/bert-base-uncased-SST-2": trio["source_finetuned"],
        "textattack/bert-base-uncased-RTE": extra["rte"], "textattack/bert-base-uncased-MRPC": extra["mrpc"],
    }, trio


def localise(raw: dict, models: dict, trio: dict, tmp_path: Path) -> dict:
    def data(section: dict) -> dict:
        return {"path": str(trio["train"]), "text_column": "text", "label_column": "label", "samples_per_class": 3,
                "seed": section.get("seed", 0)}

    def walk(node):
        if isinstance(node, dict):
            return {k: data(v) if k == "data" else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and node in models:
            return str(models[node])
        return node

    local = walk(raw)
    unmapped = [v for v in _strings(local.get("models", {})) + _strings(local.get("tasks", []))
                if "/" in v and not Path(v).exists()]
    assert not unmapped, f"recipe names models the test cannot map: {unmapped}"
    if "evaluation" in local:
        local["evaluation"] = {"path": str(trio["test"]), "max_samples": 20}
    local["output"] = {**local.get("output", {}), "path": str(tmp_path / "out")}
    if "votes_cache" in local:
        local["votes_cache"] = str(tmp_path / "cache")
    local.pop("allow_pickle", None)
    return local


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_every_method_has_a_recipe():
    from gradfix_hf.merge import registered_methods

    used = {yaml.safe_load(p.read_text())["method"]["name"] for p in RECIPES}
    assert used == set(registered_methods())


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_on_tiny_local_models(path, local_models, tmp_path, capsys):
    models, trio = local_models
    raw = yaml.safe_load(path.read_text())
    Recipe.from_dict(raw)  # the recipe as written is valid (no network needed to parse it)
    local = localise(raw, models, trio, tmp_path)
    recipe_path = tmp_path / path.name
    recipe_path.write_text(yaml.safe_dump(local))
    assert main(["run", str(recipe_path), "--no-progress"]) == 0
    report = read_report(tmp_path / "out")
    assert report["method"] == Recipe.from_dict(raw).method.to_dict()
    assert len(report["tasks"]) == len(raw.get("tasks", [None]))
    assert 0 < report["totals"]["kept_fraction"] <= 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 2
    if "evaluation" in raw:
        assert [r["method"] for r in report["evaluation"]["rows"]][:2] == ["zero-shot", "naive"]
