"""The recipes in recipes/.

* The offline ones (recipes/*.yaml) run as written on the tiny models ``gradfix quickstart`` builds, built once per
  test session in a temporary folder; each recipe is run from the folder that holds ``gradfix-quickstart/``, as a
  newcomer runs it, first with ``--dry-run`` and then for real into a temporary output folder.
* The Hub templates (recipes/hub/*.yaml) parse as written and run with their Hub models and data swapped for tiny
  local ones: only model references, data locations/columns and output paths are replaced; the method section and
  every other setting are the recipe's own, so a template that stops matching the code fails here.
"""
import json
from pathlib import Path

import pytest
import transformers
import yaml

from gradfix_hf import Recipe
from gradfix_hf.cli import main
from gradfix_hf.quickstart import (MARKER, describe_run, ensure_quickstart_assets, quickstart_recipe,
                                   run_quickstart)
from gradfix_hf.quickstart.build import STEPS
from gradfix_hf.quickstart.chat import STEPS as CHAT_STEPS
from gradfix_hf.transport.output_folder import read_report

from conftest import fine_tune
from gradfix_hf.quickstart.toy import sentiment_rows

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
OFFLINE_RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
RECIPES = sorted((RECIPES_DIR / "hub").glob("*.yaml"))  # the Hub templates
QUICKSTART = "./gradfix-quickstart/"


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


# ---------------------------------------------------------------------------------------------------------------
# offline recipes, on the quickstart's tiny models


def test_offline_recipes_cover_every_method_and_output():
    """Every registered method, both TIES variants, method: auto and a LoRA output, each in its own recipe."""
    from gradfix_hf.methods import registered_methods

    raws = {p.stem: yaml.safe_load(p.read_text()) for p in OFFLINE_RECIPES}
    methods = {raw["method"].get("name", "gradfix") for raw in raws.values()}
    assert methods == set(registered_methods()) | {"auto"}
    ties = {raw["method"]["variant"] for raw in raws.values() if raw["method"].get("name") == "ties"}
    assert ties == {"paper", "original"}
    assert any("as_lora" in raw.get("output", {}) for raw in raws.values())
    assert "quickstart" in raws


@pytest.mark.parametrize("path", OFFLINE_RECIPES, ids=[p.stem for p in OFFLINE_RECIPES])
def test_offline_recipe_is_offline_and_says_how_to_run_it(path):
    """Every model and data path lies in the quickstart's folder, and the comment header says what the recipe
    shows and the command that runs it."""
    text = path.read_text()
    raw = yaml.safe_load(text)
    paths = _strings(raw.get("models", {})) + _strings(raw.get("tasks", [])) + _strings(raw.get("data", {})) \
        + _strings(raw.get("evaluation", {})) + [raw["output"]["path"]]
    paths = [v for v in paths if "/" in v]
    assert paths and all(v.startswith(QUICKSTART) for v in paths), paths
    header = text[: text.index("\nobjective:")]
    assert all(line.startswith("#") for line in header.splitlines())
    assert f"gradfix run recipes/{path.name}" in header


@pytest.mark.parametrize("path", OFFLINE_RECIPES, ids=[p.stem for p in OFFLINE_RECIPES])
def test_offline_recipe_dry_run(path, quickstart_root, monkeypatch, capsys):
    """``--dry-run`` from the folder holding gradfix-quickstart/: every task resolves, with its vote samples."""
    root, _ = quickstart_root
    monkeypatch.chdir(root)
    recipe = Recipe.from_yaml(path)
    output = root / recipe.output.path
    before = sorted(p.name for p in output.iterdir()) if output.exists() else None
    # --overwrite: the recipe's own output folder may hold a previous run's output (the quickstart's does once the
    # README's examples ran in this folder); a dry run checks the output path as a real run would
    assert main(["run", str(path), "--dry-run", "--overwrite", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing was computed or written" in out
    plan = json.loads(out[: out.rindex("}") + 1])
    plans = list(plan["tasks"].values()) if "tasks" in plan else [plan]
    tasks = recipe.resolved_tasks()
    assert len(plans) == len(tasks)
    for task, task_plan in zip(tasks, plans):
        # every encoder tensor of the 2-layer BERT; every tensor of the 2-layer chat Llama (2×9, embeddings, norm, head)
        assert task_plan["tensors"]["transported"] == 21 if recipe.objective == "sft" else \
            task_plan["tensors"]["transported"] > 30
        expected = 2 * task.data.samples_per_class if recipe.needs_votes else 0
        if recipe.objective == "sft":  # N rows, chosen even for naive addition (the few-shot baseline trains on them)
            expected = task.data.rows
        assert task_plan["vote_samples"] == expected
    assert (sorted(p.name for p in output.iterdir()) if output.exists() else None) == before  # nothing written


@pytest.mark.parametrize("path", OFFLINE_RECIPES, ids=[p.stem for p in OFFLINE_RECIPES])
def test_offline_recipe_runs(path, quickstart_root, monkeypatch, tmp_path):
    """A real run of each recipe as written (output into tmp_path): the report holds the recipe's method (for
    ``auto``: the chosen candidate), one entry per task, the kept fraction and the evaluation table."""
    root, _ = quickstart_root
    monkeypatch.chdir(root)
    recipe = Recipe.from_yaml(path)
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "--no-progress"]) == 0
    report = read_report(out)
    kept = report["totals"]["kept_fraction"]
    only_fine_tuned = recipe.method.is_auto and report["auto"]["parameters"]["mask"] == "none"  # θ_B fine-tuned
    assert kept == 0 if only_fine_tuned else 0 < kept <= 1
    if recipe.method.is_auto:
        auto = report["auto"]
        assert len(auto["candidates"]) == len(recipe.method.parameters["candidates"])
        assert auto["alpha"] is None if only_fine_tuned else \
            auto["alpha"] in recipe.evaluation.alphas and report["method"]["alpha"] == auto["alpha"]
        assert report["method"]["name"] == "gradfix"
        assert {k: report["method"][k] for k in auto["parameters"]} == auto["parameters"]
        assert report["method"].get("few_shot") == auto.get("few_shot")  # a few-shot candidate: its passes and lr
        if only_fine_tuned:
            pass
        elif auto["key"] != "naive":
            assert kept < 1
        else:  # naive keeps all of τ_A (a chat fine-tune leaves its padding row at zero: τ_A = 0 there)
            assert kept == 1 if recipe.objective != "sft" else kept > 0.999
    else:
        assert report["method"] == recipe.method.to_dict()
        assert kept == 1 if recipe.method.name == "task_arithmetic" else kept < 1  # every other one masks or trims
    assert len(report["tasks"]) == len(recipe.resolved_tasks())
    if recipe.evaluation is not None:
        rows = report["evaluation"]["rows"]
        assert [r["method"] for r in rows][:3] == ["zero-shot", "few-shot", "naive"]
        naive = next(r["score"] for r in rows if r["method"] == "naive")
        if recipe.objective == "sft":  # NLL of the assistant tokens: lower is better
            assert report["evaluation"]["metric"] == "nll" and all(r["score"] > 0 for r in rows)
            assert naive < rows[0]["score"] - 1.0  # the chat fine-tune transfers: far below θ_B zero-shot
        else:
            assert all(0 <= r["score"] <= 1 for r in rows)
            assert naive > rows[0]["score"] + 0.1  # τ_A transfers on this close pair: naive beats θ_B zero-shot
    else:
        assert not report.get("evaluation")
    if recipe.output.as_lora is not None:
        assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
        assert 0 < report["lora"]["totals"]["relative_error"] < 1
    elif recipe.objective == "sft":  # a chat model, with the template the votes used
        model = transformers.AutoModelForCausalLM.from_pretrained(out)
        assert transformers.AutoTokenizer.from_pretrained(out).chat_template == \
            transformers.AutoTokenizer.from_pretrained(recipe.models.target.path).chat_template
        assert model.generation_config.eos_token_id == model.config.eos_token_id
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
        assert model.config.id2label == {0: "negative", 1: "positive"}  # the (first) sentiment task's head


def test_build_says_what_it_does(quickstart_root):
    """The build logs a line per model, naming its folder and its training steps, then the time it took."""
    _, lines = quickstart_root
    chat = next(i for i, line in enumerate(lines) if line.startswith("gradfix quickstart --chat: building"))
    assert lines[0].startswith("gradfix quickstart: building")
    assert lines[chat - 1].startswith("gradfix quickstart: built")
    for name, steps in STEPS.items():
        assert any(f" {name} " in line and f"{steps} steps" in line for line in lines[:chat]), name
    assert lines[-1].startswith("gradfix quickstart --chat: built")
    for name, steps in CHAT_STEPS.items():
        assert any(f" chat/{name} " in line and f"{steps} steps" in line for line in lines[chat:]), name
    workdir = quickstart_root[0] / "gradfix-quickstart"
    assert describe_run(quickstart_recipe(workdir)) == (
        "running recipes/quickstart.yaml: votes of 16 samples on θ_B, gradfix mask of τ_A, streaming merge, "
        "held-out scores on 200 samples")


def test_an_earlier_workdir_gets_only_what_it_lacks(quickstart_root, tmp_path):
    """A workdir an earlier version built (stage 1, marker ``ok``) gets stages 2 and 3 on the next build, the same
    bytes as a fresh build's, and its stage-1 files are not touched; a complete one is left alone."""
    import shutil

    fresh = quickstart_root[0] / "gradfix-quickstart"
    old = tmp_path / "gradfix-quickstart"
    for name in ("source", "source-finetuned", "target"):
        shutil.copytree(fresh / name, old / name)
    (old / "source-finetuned" / "README.md").unlink()  # stage 3's card: an earlier version wrote none
    (old / "data").mkdir()
    for split in ("train", "validation", "test"):
        shutil.copy2(fresh / "data" / f"{split}.jsonl", old / "data" / f"{split}.jsonl")
    (old / MARKER).write_text("ok\n")
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file() and p.name != MARKER}
    lines: list[str] = []
    assert ensure_quickstart_assets(old, log=lines.append) == [2, 3]
    assert "earlier version" in lines[0] and not any(" target " in line for line in lines)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # stage 3: each fine-tune's card names its base, as `gradfix rebase` reads it
    assert f"base_model: {(old / 'source').resolve()}" in (old / "source-finetuned" / "README.md").read_text()
    for name in ("source-topic-finetuned", "second-source", "second-source-finetuned"):
        assert (old / name / "model.safetensors").read_bytes() == (fresh / name / "model.safetensors").read_bytes()
    for split in ("train", "validation", "test"):
        assert (old / "data" / "topic" / f"{split}.jsonl").read_text() == \
            (fresh / "data" / "topic" / f"{split}.jsonl").read_text()
    assert ensure_quickstart_assets(old, log=lines.append) == []


def test_quickstart_reuses_its_workdir_and_says_what_it_runs(quickstart_root):
    import shutil

    workdir = quickstart_root[0] / "gradfix-quickstart"
    lines: list[str] = []
    try:
        result = run_quickstart(workdir, progress=False, log=lines.append)
    finally:  # the session's workdir stays as built (the dry runs check that no output folder appears)
        shutil.rmtree(workdir / "output", ignore_errors=True)
    assert lines == [f"gradfix quickstart: reusing the tiny models in {workdir} (built earlier)",
                     describe_run(quickstart_recipe(workdir))]
    assert [r["method"] for r in result.evaluation["rows"]] == ["zero-shot", "few-shot", "naive", "gradfix"]


# ---------------------------------------------------------------------------------------------------------------
# Hub templates, with tiny local models in place of the Hub's

#: recipes of the CLIP objective run on the tiny CLIP (test_clip_recipe_runs_on_the_tiny_clip), the others on BERT
CLIP_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("objective") == "clip-zero-shot"]
#: recipes of the seq2seq objective run on the tiny T5 (test_seq2seq_recipe_runs_on_the_tiny_t5)
SEQ2SEQ_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("objective") == "seq2seq"]
#: recipes of chat / instruction data run on the tiny chat pair (test_sft_recipe_runs_on_the_tiny_chat_pair)
SFT_RECIPES = [p for p in RECIPES if yaml.safe_load(p.read_text()).get("objective") == "sft"]
TEXT_RECIPES = [p for p in RECIPES if p not in CLIP_RECIPES + SEQ2SEQ_RECIPES + SFT_RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_hub_template_parses_and_says_what_it_downloads(path):
    """A Hub template parses as a recipe (no network needed), and its first comment line says that it downloads
    from the Hub and roughly how much."""
    recipe = Recipe.from_yaml(path)
    text = path.read_text()
    assert text.startswith("# HUB TEMPLATE: needs network.") and "GB" in text.split("\n#\n")[0]
    assert any(not str(task.models.target.path).startswith(".") for task in recipe.resolved_tasks())


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


def test_every_method_has_a_recipe():
    from gradfix_hf.methods import registered_methods

    used = {yaml.safe_load(p.read_text())["method"]["name"] for p in RECIPES}
    assert used - {"auto"} == set(registered_methods())  # auto chooses among the registered ones


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
    scored = raw["evaluation"].get("test_split") or raw["evaluation"]["split"]  # a run scores the test split if any
    assert report["evaluation"]["split"].endswith(":" + scored)
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
    assert report["evaluation"]["split"].endswith(raw["evaluation"]["test_split"])  # a run scores the test split
    assert report["evaluation"]["split_role"] == "test"
    assert "exact_match" in report["evaluation"]["metrics"]
    result = sweep(str(recipe_path), progress=False)
    assert result.alphas == raw["evaluation"]["alphas"]
    assert result.test["split"].endswith(raw["evaluation"]["test_split"])
    assert set(result.methods) == {"naive", "gradfix"}
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "T5ForConditionalGeneration"


#: Hub ids of the chat recipes → the tiny chat pair's folders (gradfix quickstart --chat)
CHAT_MODELS = {"Qwen/Qwen2-0.5B-Instruct": "source", "your-org/qwen2-0.5b-instruct-support-lora": "source-lora",
               "Qwen/Qwen2.5-0.5B-Instruct": "target"}


@pytest.mark.parametrize("path", SFT_RECIPES, ids=[p.stem for p in SFT_RECIPES])
def test_sft_recipe_runs_on_the_tiny_chat_pair(path, quickstart_root, tmp_path):
    """Models → the tiny chat pair (the LoRA placeholder → its LoRA adapter), the Hub data set → its conversations
    (the same ``messages`` column; splits → files); the method, metrics, α grid and LoRA output are the recipe's."""
    raw = yaml.safe_load(path.read_text())
    Recipe.from_dict(raw)  # the recipe as written is valid
    unmapped = [v for v in raw["models"].values() if v not in CHAT_MODELS]
    assert not unmapped, f"recipe names models the test cannot map: {unmapped}"
    chat = quickstart_root[0] / "gradfix-quickstart" / "chat"
    local = {**raw, "models": {role: str(chat / CHAT_MODELS[v]) for role, v in raw["models"].items()}}
    local["data"] = {**{k: v for k, v in raw["data"].items() if k not in ("path", "name", "revision", "split")},
                     "path": str(chat / "data" / "train.jsonl"), "rows": 8, "max_length": 128}
    local["evaluation"] = {**{k: v for k, v in raw["evaluation"].items() if k not in ("split", "test_split")},
                           "path": str(chat / "data" / "validation.jsonl"), "max_samples": 10,
                           "test_path": str(chat / "data" / "test.jsonl"), "max_new_tokens": 16}
    local["output"] = {**raw["output"], "path": str(tmp_path / "out")}
    recipe_path = tmp_path / path.name
    recipe_path.write_text(yaml.safe_dump(local))
    assert main(["run", str(recipe_path), "--no-progress"]) == 0
    report = read_report(tmp_path / "out")
    assert report["evaluation"]["metrics"] == raw["evaluation"]["metrics"]
    assert report["evaluation"]["split_role"] == "test" and report["auto"]["metric"] == "nll"
    assert report["lora"]["task_type"] == "CAUSAL_LM" and (tmp_path / "out" / "adapter_config.json").is_file()
