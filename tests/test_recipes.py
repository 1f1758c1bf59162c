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
from gradfix_hf.transport.output_folder import read_report

from conftest import fine_tune
from gradfix_hf.quickstart.toy import sentiment_rows

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml") if p.name != "quickstart.yaml")
#: recipes of the CLIP objective run on the tiny CLIP (test_clip_recipe_runs_on_the_tiny_clip), the others on BERT
CLIP_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("objective") == "clip-zero-shot"]
#: recipes of the seq2seq objective run on the tiny T5 (test_seq2seq_recipe_runs_on_the_tiny_t5)
SEQ2SEQ_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("objective") == "seq2seq"]
TEXT_RECIPES = [p for p in RECIPES if p not in CLIP_RECIPES and p not in SEQ2SEQ_RECIPES]


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
    from gradfix_hf.methods import registered_methods

    used = {yaml.safe_load(p.read_text())["method"]["name"] for p in RECIPES}
    assert used == set(registered_methods())


@pytest.mark.parametrize("path", TEXT_RECIPES, ids=[p.stem for p in TEXT_RECIPES])
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
        assert [r["method"] for r in report["evaluation"]["rows"]][:3] == ["zero-shot", "few-shot", "naive"]


#: Hub ids of the CLIP recipes → the tiny CLIP trio's roles
CLIP_MODELS = {"laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K": "source",
               "my-org/CLIP-ViT-B-16-DataComp.XL-s13B-b90K-eurosat": "source_finetuned",
               "laion/CLIP-ViT-B-16-laion2B-s34B-b88K": "target"}


@pytest.mark.parametrize("path", CLIP_RECIPES, ids=[p.stem for p in CLIP_RECIPES])
def test_clip_recipe_runs_on_the_tiny_clip(path, clip_trio, tmp_path):
    """Models → the tiny CLIP trio; the Hub data set → its imagefolder (same image/label columns and splits). Its
    three colour classes are not EuroSAT's, so ``label_words`` gives way to the folder names; the templates, the
    method, the evaluation splits and every other setting are the recipe's own."""
    raw = yaml.safe_load(path.read_text())
    Recipe.from_dict(raw)  # the recipe as written is valid
    unmapped = [v for v in raw["models"].values() if v not in CLIP_MODELS]
    assert not unmapped, f"recipe names models the test cannot map: {unmapped}"
    local = {**raw, "models": {role: str(clip_trio[CLIP_MODELS[v]]) for role, v in raw["models"].items()}}
    data = raw["data"]
    local["data"] = {**{k: v for k, v in data.items() if k not in ("path", "name", "revision", "label_words")},
                     "path": str(clip_trio["images"]), "samples_per_class": 3}
    local["evaluation"] = {**raw["evaluation"], "max_samples": 8}
    local["output"] = {**raw.get("output", {}), "path": str(tmp_path / "out")}
    local.pop("allow_pickle", None)
    recipe_path = tmp_path / path.name
    recipe_path.write_text(yaml.safe_dump(local))
    assert main(["run", str(recipe_path), "--no-progress"]) == 0
    report = read_report(tmp_path / "out")
    assert report["method"] == Recipe.from_dict(raw).method.to_dict()
    assert 0 < report["totals"]["kept_fraction"] <= 1
    assert report["evaluation"]["split"].endswith(":" + raw["evaluation"]["split"])
    assert {"zero-shot", "naive", "gradfix"} <= {r["method"] for r in report["evaluation"]["rows"]}
    model = transformers.AutoModel.from_pretrained(tmp_path / "out")
    assert type(model) is transformers.CLIPModel


#: Hub ids of the seq2seq recipes → the tiny T5 trio's roles
T5_MODELS = {"google/t5-v1_1-base": "source", "your-org/t5-v1_1-base-rte": "source_finetuned",
             "google/flan-t5-base": "target"}


@pytest.mark.parametrize("path", SEQ2SEQ_RECIPES, ids=[p.stem for p in SEQ2SEQ_RECIPES])
def test_seq2seq_recipe_runs_on_the_tiny_t5(path, trios, tmp_path):
    """Models → the tiny T5 trio; the Hub data set → a local folder with the recipe's own columns and splits (the
    split slices such as ``train[:90%]`` are read by ``datasets`` as written). The tiny vocabulary has no
    "yes"/"no", so ``label_words`` keep their keys but take the tiny task's words; the prompt, the method, the
    evaluation splits and the α grid are the recipe's own, and a sweep runs on them."""
    import json

    from gradfix_hf import sweep

    trio = trios("t5")
    raw = yaml.safe_load(path.read_text())
    Recipe.from_dict(raw)  # the recipe as written is valid
    unmapped = [v for v in raw["models"].values() if v not in T5_MODELS]
    assert not unmapped, f"recipe names models the test cannot map: {unmapped}"
    data = raw["data"]
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [json.loads(line) for line in trio["train"].read_text().splitlines()]
    held = [json.loads(line) for line in trio["test"].read_text().splitlines()]
    for split, items in (("train", rows), (raw["evaluation"]["test_split"], held)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i, row in enumerate(items):
                handle.write(json.dumps({data["text_column"]: row["text"], data["text_pair_column"]: f"pair {i}",
                                         data["label_column"]: row["label"]}) + "\n")
    from conftest import LABELS

    local = {**raw, "models": {role: str(trio[T5_MODELS[v]]) for role, v in raw["models"].items()}}
    local["data"] = {**{k: v for k, v in data.items() if k not in ("path", "name", "revision")},
                     "path": str(folder), "samples_per_class": 3,
                     "label_words": {key: LABELS[int(key)] for key in data["label_words"]}}
    local["evaluation"] = {**raw["evaluation"], "few_shot_steps": 1}
    local["output"] = {**raw.get("output", {}), "path": str(tmp_path / "out")}
    recipe_path = tmp_path / path.name
    recipe_path.write_text(yaml.safe_dump(local))
    assert main(["run", str(recipe_path), "--no-progress"]) == 0
    report = read_report(tmp_path / "out")
    assert report["method"] == Recipe.from_dict(raw).method.to_dict()
    assert report["evaluation"]["split"].endswith(raw["evaluation"]["split"])
    assert "exact_match" in report["evaluation"]["metrics"]
    result = sweep(str(recipe_path), progress=False)
    assert result.alphas == raw["evaluation"]["alphas"] and result.test["split"].endswith(raw["evaluation"]["test_split"])
    assert set(result.methods) == {"naive", "gradfix"}
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "T5ForConditionalGeneration"
