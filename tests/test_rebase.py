"""``gradfix rebase FINETUNED --onto NEW_BASE --data DATA`` and ``gradfix_hf.rebase(...)``: the old base, the objective
and the splits inferred from the files, ``method: auto`` choosing, a LoRA in giving a LoRA out, the recipe written
into the output and rerun byte for byte, the model card naming both bases; the dry run; every ambiguity and bad
input refused with the flag that settles it. On the quickstart's tiny models (built offline) and the test trios.
"""
import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData

import gradfix_hf
from gradfix_hf.cli import main
from gradfix_hf.data import carve_validation
from gradfix_hf.errors import DataError, RecipeError
from gradfix_hf.quickstart.toy import write_jsonl
from gradfix_hf.recipe import DataConfig

FAST = ["--alphas", "0.5,1.0", "--max-eval-samples", "60", "--no-progress"]


@pytest.fixture(scope="module")
def qs(quickstart_root) -> Path:
    return quickstart_root[0] / "gradfix-quickstart"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rebase_a_classifier_reads_its_base_from_the_card_and_reruns_from_recipe_yaml(qs, tmp_path, capsys):
    out = tmp_path / "rebased"
    code, stdout, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--data",
                                qs / "data" / "train.jsonl", "-o", out, *FAST)
    assert code == 0, err
    assert f"old base     {(qs / 'source').resolve()}  [from model card (base_model)]" in stdout
    assert "objective    sequence-classification  [from config.json (BertForSequenceClassification)]" in stdout
    assert "validation: a carve of 0.2 of train (seed 0)" in stdout and "method auto: chose" in stdout
    report = json.loads((out / "gradfix_report.json").read_text())
    assert report["rebase"]["base"] == {"value": str((qs / "source").resolve()), "from": "model card (base_model)"}
    assert report["auto"]["margin"]["difference"] >= 0 and report["auto"]["split"].endswith("seed 0)")
    assert report["evaluation"]["n_samples"] == 60 and report["votes"]["n_samples"] == 16  # 8 per class
    card = (out / "README.md").read_text()
    assert "## Rebase" in card and str((qs / "source").resolve()) in card and str((qs / "target").resolve()) in card
    assert f"the data `{(qs / 'data' / 'train.jsonl').resolve()}`" in card
    assert f"chose {report['auto']['label']}" in card

    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["method"] == {"name": "auto"} and recipe["data"]["validation_size"] == 0.2
    assert recipe["models"]["source"] == str((qs / "source").resolve())
    code, _, err = run_cli(capsys, "run", out / "recipe.yaml", "-o", tmp_path / "again", "--no-progress")
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_rebase_a_chat_lora_gives_a_lora_or_full_weights(qs, tmp_path):
    chat = qs / "chat"
    kwargs = dict(onto=chat / "target", data=chat / "data" / "train.jsonl", samples=8, max_eval_samples=20,
                  alphas=[1.0], progress=False)
    result = gradfix_hf.rebase(chat / "source-lora", output_dir=tmp_path / "lora", **kwargs)
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and not (tmp_path / "lora" / "model.safetensors").exists()
    rebase = result.report["rebase"]
    assert rebase["objective"]["value"] == "sft (messages)" and rebase["output"] == "LoRA adapter r=8"
    assert rebase["base"]["from"] == "adapter_config.json (base_model_name_or_path)"
    assert result.report["objective"] == "sft" and result.evaluation["metrics"][0] == "nll"
    reply = result.model.generate(**result.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True),
        max_new_tokens=3, do_sample=False)
    assert reply.shape[1] > 0

    full = gradfix_hf.rebase(chat / "source-lora", output_dir=tmp_path / "full", full=True, **kwargs)
    assert (tmp_path / "full" / "model.safetensors").is_file() and "lora" not in full.report
    assert yaml.safe_load((tmp_path / "full" / "recipe.yaml").read_text()).get("output") is None


def test_dry_run_prints_the_inference_and_writes_nothing(qs, tmp_path, capsys):
    out = tmp_path / "never"
    code, stdout, err = run_cli(capsys, "rebase", qs / "chat" / "source-lora", "--onto", qs / "chat" / "target",
                                "--data", qs / "chat" / "data" / "train.jsonl", "-o", out, "--dry-run")
    assert code == 0, err
    assert "fine-tune    " in stdout and "(LoRA adapter, r=8)" in stdout
    assert ("objective    sft (messages)  [from adapter_config.json (task_type CAUSAL_LM) and the data's columns "
            "(messages)]") in stdout
    assert "local, nothing to download" in stdout and "output       LoRA adapter r=8" in stdout
    assert yaml.safe_load(stdout.split("recipe:\n", 1)[1].rsplit("dry run:", 1)[0])["output"]["as_lora"]["rank"] == 8
    assert not out.exists()
    inferred = gradfix_hf.rebase(qs / "source-finetuned", onto=qs / "target", data=qs / "data" / "train.jsonl",
                                 dry_run=True)
    assert inferred["splits"]["vote"] == "train" and inferred["downloads"]["onto"]["where"] == "local"
    assert inferred["downloads"]["onto"]["bytes"] == sum(
        p.stat().st_size for p in (qs / "target").iterdir() if p.name != "README.md")


def test_splits_of_a_data_set_that_has_them(qs, tmp_path):
    rows = [json.loads(line) for line in (qs / "data" / "train.jsonl").read_text().splitlines()]
    splits = {"train": rows[:100], "validation": rows[100:140], "test": rows[140:180]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(tmp_path / "d")
    inferred = gradfix_hf.rebase(qs / "source-finetuned", onto=qs / "target", data=tmp_path / "d", dry_run=True)
    assert inferred["splits"] == {"vote": "train", "validation": "validation", "test": "test"}
    assert "validation_size" not in inferred["recipe"]["data"]
    assert inferred["recipe"]["evaluation"]["test_split"] == "test"
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows[:50]),
                          "other": datasets.Dataset.from_list(rows[50:90])}).save_to_disk(tmp_path / "no-train")
    with pytest.raises(DataError, match="no 'train' split among dev, other; say which split votes with --split"):
        gradfix_hf.rebase(qs / "source-finetuned", onto=qs / "target", data=tmp_path / "no-train", dry_run=True)
    inferred = gradfix_hf.rebase(qs / "source-finetuned", onto=qs / "target", data=tmp_path / "no-train",
                                 split="other", dry_run=True)
    assert inferred["splits"]["validation"] == "dev"


def test_the_base_and_the_objective_come_from_flags_when_the_files_do_not_say(trios, tmp_path, capsys):
    t5 = trios("t5")
    args = ["rebase", t5["source_finetuned"], "--onto", t5["target"], "--data", t5["train"], "--dry-run"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "no base_model in its model card); give the old base with --base" in err
    code, _, err = run_cli(capsys, *args, "--base", t5["source"])
    assert code == 2 and "are not words" in err and "--label-words, e.g. 0=negative,1=positive" in err
    code, stdout, err = run_cli(capsys, *args, "--base", t5["source"], "--label-words", "0=negative,1=positive")
    assert code == 0, err
    assert "objective    seq2seq  [from config.json (T5ForConditionalGeneration)" in stdout
    assert "label_words:\n    0: negative\n    1: positive" in stdout

    folder = tmp_path / "two-bases"
    shutil.copytree(t5["source_finetuned"], folder)
    ModelCard(f"---\n{ModelCardData(base_model=['org/a', 'org/b']).to_yaml()}\n---\n").save(folder / "README.md")
    with pytest.raises(RecipeError, match=r"names 2 base models \(org/a, org/b\); say which one .* with --base"):
        gradfix_hf.rebase(folder, onto=t5["target"], data=t5["train"], dry_run=True)


def test_ambiguous_or_unusable_data_names_the_flag(qs, tmp_path, capsys):
    chat = qs / "chat"
    rows = [json.loads(line) for line in (chat / "data" / "train.jsonl").read_text().splitlines()][:20]
    mixed = [{**r, "prompt": "q", "completion": "a"} for r in rows]
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    base = ["rebase", chat / "source-lora", "--onto", chat / "target", "--dry-run", "--data"]
    code, _, err = run_cli(capsys, *base, tmp_path / "mixed.jsonl")
    assert code == 2 and "hold 2 data shapes (messages, prompt-completion)" in err
    assert "--format messages | prompt-completion" in err
    code, stdout, err = run_cli(capsys, *base, tmp_path / "mixed.jsonl", "--format", "prompt-completion")
    assert code == 0 and "sft (prompt-completion)" in stdout, err
    code, _, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--dry-run",
                           "--data", chat / "data" / "train.jsonl")
    assert code == 2 and "needs a text column 'text' and a label column 'label'" in err and "--text-column" in err
    code, _, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--data",
                           qs / "data" / "train.jsonl")
    assert code == 2 and "give an output folder (-o/--output) or a Hub repo (--push-to-hub" in err


def test_outputs_that_would_replace_an_input_or_leave_no_rows_are_refused(qs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--data",
                           qs / "data" / "train.jsonl", "-o", qs / "target" / "out")
    assert code == 2 and "--onto" in err and not (qs / "target" / "out").exists()
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--data",
                           qs / "data" / "train.jsonl", "-o", out, "--validation-size", "800", *FAST)
    assert code == 2 and "data.validation_size: carving 800 validation row(s) from 800 leaves none" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "rebase", qs / "source-finetuned", "--onto", qs / "target", "--data",
                           qs / "data" / "train.jsonl", "--dry-run", "--validation-size", "2.5")
    assert code == 2 and "--validation-size: a fraction in (0, 1) or a whole number of rows" in err


def test_carve_validation_is_seeded_disjoint_and_stratified():
    rows = [{"text": f"row {i}", "label": "pos" if i % 4 == 0 else "neg"} for i in range(100)]
    data = datasets.Dataset.from_list(rows)
    rest, held = carve_validation(data, 0.2, seed=0, label_column="label")
    again_rest, again_held = carve_validation(data, 0.2, seed=0, label_column="label")
    assert held["text"] == again_held["text"] and len(held) == 20 and len(rest) == 80
    assert not set(held["text"]) & set(rest["text"])
    assert held["label"].count("pos") == 5  # stratified: a quarter of the rows, a quarter of the carve
    assert carve_validation(data, 0.2, seed=1, label_column="label")[1]["text"] != held["text"]
    assert held["label"] == [r["label"] for r in rows if r["text"] in set(held["text"])]  # labels untouched
    assert len(carve_validation(data, 7, seed=0)[1]) == 7
    with pytest.raises(DataError, match="carving 100 validation row"):
        carve_validation(data, 100, seed=0)


@pytest.mark.parametrize("bad", [0, 1.0, -3, "0.2", True])
def test_validation_size_in_a_recipe_is_checked(bad):
    with pytest.raises(RecipeError, match="data.validation_size"):
        DataConfig(path="x.jsonl", validation_size=bad)
