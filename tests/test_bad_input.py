"""Bad input fails fast and clearly: the error names the model/file/tensor/field and the reason, is raised
before any gradient work, and nothing is written (no output folder, no hidden partial folder).

Errors that are raised before gradients are checked on ``prepare`` (which does no gradient work), and the
same recipe is then run through ``transport`` (or the CLI) to check that nothing was written.
"""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from conftest import WORDS, recipe_dict, tiny_config, word_tokenizer
from gradfix_hf import Recipe, VotesFile, compute_recipe_votes, prepare, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import (CompatibilityError, DataError, GradFixError, ModelResolutionError, NonFiniteError,
                               RecipeError, VotesFileError)
from gradfix_hf.transport.output_folder import atomic_folder
from gradfix_hf.votes import params_fingerprint

QUERY = "encoder.layer.0.attention.self.query.weight"  # a body tensor as stored by BertModel


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def bert(trios):
    return trios("bert")


def bert_recipe(trio, *, models=None, data=None, **overrides):
    """The bert recipe with 2 samples per class (fast), ``models``/``data`` merged into the defaults."""
    base = recipe_dict("bert", trio)
    return recipe_dict("bert", trio, models={**base["models"], **(models or {})},
                       data={**base["data"], "samples_per_class": 2, **(data or {})}, **overrides)


def copy_model(trio, role, tmp_path, name=None):
    """A private copy of one of the session trio's model folders (never corrupt the shared one)."""
    folder = tmp_path / (name or role)
    shutil.copytree(trio[role], folder)
    return folder


def rewrite_weights(folder, edit):
    """Load model.safetensors, let ``edit(state)`` change it, and save it back."""
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def assert_nothing_written(out):
    out = Path(out)
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        partial = sorted(p.name for p in out.parent.glob(f".{out.name}.partial-*"))
        assert not partial, f"partial output folders left behind: {partial}"


def input_roots(raw, *extra):
    """Every local folder or file a recipe reads (their parents: a trio's models and data sit side by side)."""
    roots = {Path(p) for p in extra}
    values = list((raw.get("models") or {}).values()) + [(raw.get("data") or {}).get("path"), raw.get("votes")]
    for task in raw.get("tasks") or []:
        values += [task.get("source_finetuned"), task.get("source"), task.get("votes")]
    for value in values:
        path = Path(value["path"] if isinstance(value, dict) else value) if value else None
        if path is not None and path.exists():
            roots.add(path.parent)
    return sorted(roots)


def snapshot(roots):
    """sha256 of every file under ``roots``: what a failed run must leave exactly as it was."""
    hashes = {}
    for root in roots:
        for path in ([root] if Path(root).is_file() else sorted(Path(root).rglob("*"))):
            if path.is_file() and ".partial-" not in path.name:
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def assert_mentions(message, *fragments):
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in error message: {message}"


def fails_before_gradients(raw, exc_type, *fragments, tmp_path, loss_fn=None):
    """``prepare`` raises ``exc_type`` naming ``fragments``; ``transport`` then writes nothing and leaves every
    input file as it was."""
    roots = input_roots(raw, tmp_path)
    before = snapshot(roots)
    with pytest.raises(exc_type) as info:
        prepare(Recipe.from_dict(raw, loss_fn=loss_fn))
    message = str(info.value)
    assert_mentions(message, *fragments)
    out = tmp_path / "out"
    with pytest.raises(exc_type) as again:
        transport(raw, out, progress=False, loss_fn=loss_fn)
    assert str(again.value) == message
    assert_nothing_written(out)
    assert snapshot(roots) == before, "an input file was changed or removed"
    return message


def write_recipe(tmp_path, raw, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def cli_fails(tmp_path, capsys, recipe_path, *fragments, extra=()):
    out = tmp_path / "cli-out"
    try:
        raw = yaml.safe_load(Path(recipe_path).read_text())
    except (OSError, yaml.YAMLError):  # a missing or broken recipe: its folder is still checked
        raw = {}
    roots = input_roots(raw if isinstance(raw, dict) else {}, tmp_path)
    before = snapshot(roots)
    capsys.readouterr()  # drop what the test printed so far (progress bars of save_pretrained)
    assert main(["run", str(recipe_path), "-o", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradfix: error:"), err
    assert_mentions(err, *fragments)
    assert_nothing_written(out)
    assert snapshot(roots) == before, "an input file was changed or removed"
    return err


def save_random_model(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_rows(trio):
    return [json.loads(line) for line in Path(trio["train"]).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- models: shapes, names, types, vocabularies


def test_target_with_another_hidden_size(bert, tmp_path, capsys):
    tokenizer = word_tokenizer(WORDS, style="bert")
    config = tiny_config("bert", tokenizer)
    config.hidden_size = 48
    torch.manual_seed(1)
    target = save_random_model(tmp_path / "target-h48", transformers.BertModel(config), tokenizer)
    raw = bert_recipe(bert, models={"target": str(target)})
    message = fails_before_gradients(raw, CompatibilityError, "tensor 'bert.", "models.source", str(target),
                                     "models.target's config.json", tmp_path=tmp_path)
    assert ", 32] in models.source" in message and ", 48] in the layout" in message
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), "shape", "models.source", str(target))


def test_target_tensor_rewritten_with_another_shape(bert, tmp_path, capsys):
    target = copy_model(bert, "target", tmp_path)
    rewrite_weights(target, lambda s: s.__setitem__(QUERY, torch.zeros(32, 16)))
    raw = bert_recipe(bert, models={"target": str(target)})
    fails_before_gradients(raw, CompatibilityError, f"tensor 'bert.{QUERY}'", "shape [32, 16] in models.target",
                           str(target), "[32, 32]", tmp_path=tmp_path)
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), f"bert.{QUERY}", "[32, 16]", "models.target")


@pytest.mark.parametrize("how", ["rename", "drop"])
def test_target_tensor_name_mismatch(bert, tmp_path, how):
    target = copy_model(bert, "target", tmp_path)
    name = "encoder.layer.1.output.dense.weight"

    def edit(state):
        tensor = state.pop(name)
        if how == "rename":
            state["encoder.layer.1.output.dense.kernel"] = tensor

    rewrite_weights(target, edit)
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), CompatibilityError,
                           f"tensor 'bert.{name}'", f"missing from models.target ({target})",
                           "do not have the same tensor names", tmp_path=tmp_path)


def test_source_missing_a_body_tensor_is_not_taken_for_a_new_head(bert, tmp_path):
    """θ_A lacking a tensor θ_B has must fail, not silently copy θ_A^ft's tensor over θ_B's."""
    source = copy_model(bert, "source", tmp_path)
    name = "encoder.layer.1.output.dense.weight"
    rewrite_weights(source, lambda s: s.pop(name))
    fails_before_gradients(bert_recipe(bert, models={"source": str(source)}), CompatibilityError,
                           f"tensor 'bert.{name}'", f"missing from models.source ({source})", tmp_path=tmp_path)


def test_target_finetuned_missing_a_tensor_names_that_model(bert, tmp_path):
    target_ft = copy_model(bert, "target_finetuned", tmp_path)
    name = "bert.encoder.layer.0.output.dense.weight"
    rewrite_weights(target_ft, lambda s: s.pop(name))
    raw = bert_recipe(bert, models={"target_finetuned": str(target_ft)}, method={"mask": "oracle"})
    fails_before_gradients(raw, CompatibilityError, f"tensor {name!r}",
                           f"missing from models.target_finetuned ({target_ft})", tmp_path=tmp_path)


def test_target_config_with_another_model_type(bert, tmp_path):
    target = copy_model(bert, "target", tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "roberta"
    (target / "config.json").write_text(json.dumps(config))
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), CompatibilityError,
                           "model_type 'bert'", f"models.target ({target}) has 'roberta'", "one architecture",
                           tmp_path=tmp_path)


def test_target_of_another_architecture(bert, tmp_path, capsys):
    tokenizer = word_tokenizer(WORDS, style="gpt2")
    torch.manual_seed(1)
    gpt2 = save_random_model(tmp_path / "gpt2", transformers.GPT2Model(tiny_config("gpt2", tokenizer)), tokenizer)
    raw = bert_recipe(bert, models={"target": str(gpt2)})
    fails_before_gradients(raw, CompatibilityError, "model_type 'bert'", f"models.target ({gpt2}) has 'gpt2'",
                           tmp_path=tmp_path)
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), "model_type", "'gpt2'", "models.target")


def test_vocabulary_size_mismatch_without_a_tokenizer_to_line_up_by(bert, tmp_path):
    """θ_B with more token rows and no tokenizer: its rows cannot be lined up with θ_A's by token string (with a
    tokenizer they are: tests/test_vocabulary.py)."""
    tokenizer = word_tokenizer(WORDS + ["zzextra", "zzmore"], style="bert")
    torch.manual_seed(1)
    target = save_random_model(tmp_path / "target-v", transformers.BertModel(tiny_config("bert", tokenizer)),
                               tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (target / name).unlink(missing_ok=True)
    size = len(word_tokenizer(WORDS, style="bert"))
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), CompatibilityError,
                           f"vocabulary size {size}", f"models.target ({target}) has {size + 2}",
                           "token ids would not line up", tmp_path=tmp_path)


def test_fine_tune_whose_token_ids_differ_from_its_base(bert, tmp_path):
    """θ_A^ft must keep θ_A's token ids (θ_B may renumber them: its rows are lined up by token string)."""
    words = list(WORDS)
    i, j = words.index("good"), words.index("bad")
    words[i], words[j] = words[j], words[i]
    swapped = word_tokenizer(words, style="bert")
    assert len(swapped) == len(word_tokenizer(WORDS, style="bert"))
    folder = copy_model(bert, "source_finetuned", tmp_path)
    swapped.save_pretrained(folder)
    message = fails_before_gradients(bert_recipe(bert, models={"source_finetuned": str(folder)}), CompatibilityError,
                                     "models.source_finetuned", "tokenizer vocabulary differs from models.source's",
                                     "'bad' is id", "'good' is id", "a fine-tune must keep its base's token ids",
                                     tmp_path=tmp_path)
    assert str(folder) in message


# ---------------------------------------------------------------- models: files


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_missing_model_folder(bert, tmp_path, capsys, monkeypatch, kind):
    import huggingface_hub.constants

    # "no-such-dir/model" is also a valid Hub id: look it up offline in an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    missing = str(tmp_path / "no-such-model") if kind == "absolute" else "no-such-dir/model"
    raw = bert_recipe(bert, models={"target": missing})
    reason = "does not exist" if kind == "absolute" else "no local folder"
    fails_before_gradients(raw, ModelResolutionError, "models.target", missing, reason, tmp_path=tmp_path)
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), "models.target", missing)


def test_folder_without_weights(bert, tmp_path):
    target = copy_model(bert, "target", tmp_path)
    (target / "model.safetensors").unlink()
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), ModelResolutionError,
                           "models.target", f"no model weights in {target}", "model.safetensors",
                           "found ['config.json', 'tokenizer.json', 'tokenizer_config.json']", tmp_path=tmp_path)


def test_folder_without_config(bert, tmp_path):
    target = copy_model(bert, "target", tmp_path)
    (target / "config.json").unlink()
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), ModelResolutionError,
                           "models.target", str(target), "no config.json", tmp_path=tmp_path)


def test_shard_listed_in_index_is_missing(bert, tmp_path):
    target = tmp_path / "sharded"
    transformers.BertModel.from_pretrained(bert["target"]).save_pretrained(target, max_shard_size="20KB")
    word_tokenizer(WORDS, style="bert").save_pretrained(target)
    assert not (target / "model.safetensors").exists()
    shards = sorted(target.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (target / "model.safetensors.index.json").is_file()
    raw = bert_recipe(bert, models={"target": str(target)})
    prepare(Recipe.from_dict(raw))  # the intact sharded checkpoint is fine
    shards[1].unlink()
    fails_before_gradients(raw, ModelResolutionError, "models.target", "listed in the index are missing",
                           shards[1].name, tmp_path=tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 5])
def test_truncated_safetensors_file(bert, tmp_path, keep):
    target = copy_model(bert, "target", tmp_path)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    fails_before_gradients(bert_recipe(bert, models={"target": str(target)}), ModelResolutionError,
                           "models.target", "corrupt or truncated", str(weights), tmp_path=tmp_path)


def test_pickle_weights_refused_without_allow_pickle_and_accepted_with_it(bert, tmp_path, capsys):
    target = copy_model(bert, "target", tmp_path)
    state = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    torch.save(state, target / "pytorch_model.bin")
    raw = bert_recipe(bert, models={"target": str(target)})
    fails_before_gradients(raw, ModelResolutionError, "models.target", str(target), "pickle",
                           "pytorch_model.bin", "allow_pickle: true", tmp_path=tmp_path)
    recipe_path = write_recipe(tmp_path, raw)
    cli_fails(tmp_path, capsys, recipe_path, "models.target", "pickle", "--allow-pickle")

    allowed = transport({**raw, "allow_pickle": True}, tmp_path / "allowed", progress=False)
    assert allowed.report["models"]["models.target"]["weights"] == "pickle"
    reference = transport(bert_recipe(bert), tmp_path / "reference", progress=False)
    a, b = load_file(allowed.output_dir / "model.safetensors"), load_file(reference.output_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same weights, same result
    assert main(["run", recipe_path, "-o", str(tmp_path / "cli"), "--no-progress", "--allow-pickle"]) == 0


def test_sharded_pickle_index_is_refused_as_pickle_before_missing_shards(bert, tmp_path):
    """What a Hub download without allow_pickle leaves: the pickle index (*.json) but not its shards."""
    target = copy_model(bert, "target", tmp_path)
    (target / "model.safetensors").unlink()
    names = list(load_file(bert["target"] / "model.safetensors"))
    shards = {n: f"pytorch_model-0000{1 + i % 2}-of-00002.bin" for i, n in enumerate(names)}
    index = {"metadata": {}, "weight_map": shards}
    (target / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    raw = bert_recipe(bert, models={"target": str(target)})
    fails_before_gradients(raw, ModelResolutionError, "models.target", "only has pickle weights",
                           "pytorch_model.bin.index.json", "allow_pickle: true", tmp_path=tmp_path)
    fails_before_gradients({**raw, "allow_pickle": True}, ModelResolutionError, "models.target",
                           "listed in the index are missing", "pytorch_model-00002-of-00002.bin", tmp_path=tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_in_source_finetune(bert, tmp_path, value):
    finetuned = copy_model(bert, "source_finetuned", tmp_path)
    name = "bert.encoder.layer.0.attention.self.key.weight"

    def edit(state):
        state[name][0, 0] = value

    rewrite_weights(finetuned, edit)
    fails_before_gradients(bert_recipe(bert, models={"source_finetuned": str(finetuned)}), NonFiniteError,
                           "models.source_finetuned", str(finetuned), f"tensor {name!r}", "1 NaN/inf",
                           tmp_path=tmp_path)


@pytest.mark.parametrize("role,method", [("source", {"mask": "gradfix"}), ("source_finetuned", {"mask": "gradfix"}),
                                         ("target", {"mask": "gradfix"}), ("target", {"name": "task_arithmetic"})])
def test_non_finite_weight_found_by_a_merge_without_gradients(bert, tmp_path, role, method):
    """From a votes file (or a method without votes) no gradient is computed, so the NaN/inf pre-pass is skipped
    and the merge checks each input as it reads it: the same named error, and no output folder."""
    from gradfix_hf import compute_recipe_votes

    votes = tmp_path / "votes.safetensors"
    compute_recipe_votes(prepare(Recipe.from_dict(bert_recipe(bert))), progress=False).save(votes)
    model = copy_model(bert, role, tmp_path)
    name = "bert.encoder.layer.1.output.dense.weight" if role == "source_finetuned" else "encoder.layer.1.output.dense.weight"

    def edit(state):
        state[name][1, 2] = float("nan")

    rewrite_weights(model, edit)
    raw = bert_recipe(bert, models={role: str(model)})
    raw["method"] = {"alpha": 0.5, **method}
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as info:
        transport(raw, out, votes=None if "name" in method else votes, progress=False)
    assert_mentions(str(info.value), f"models.{role}", str(model), f"tensor {name!r}", "1 NaN/inf")
    assert_nothing_written(out)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("name,content", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "text,label\n")])
def test_empty_data_file(bert, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    fails_before_gradients(bert_recipe(bert, data={"path": str(path)}), DataError, "data", str(path), "is empty",
                           tmp_path=tmp_path)


@pytest.mark.parametrize("column", ["text", "label"])
def test_missing_text_or_label_column(bert, tmp_path, capsys, column):
    renamed = {"text": "sentence", "label": "y"}[column]
    rows = [{(renamed if k == column else k): v for k, v in row.items()} for row in train_rows(bert)]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    raw = bert_recipe(bert, data={"path": str(path)})
    fails_before_gradients(raw, DataError, str(path), f"column(s) [{column!r}] not in the data", repr(renamed),
                           f"data.{column}_column", tmp_path=tmp_path)
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), f"[{column!r}]", str(path))


def test_class_with_fewer_samples_than_samples_per_class(bert, tmp_path):
    rows = train_rows(bert)
    rows = [r for r in rows if r["label"] == 1] + [r for r in rows if r["label"] == 0][:1]
    path = write_jsonl(tmp_path / "few.jsonl", rows)
    fails_before_gradients(bert_recipe(bert, data={"path": str(path)}), DataError, "class 'negative'",
                           "has 1 sample(s)", str(path), "samples_per_class asks for 2", tmp_path=tmp_path)


def test_label_outside_the_label_set(bert, tmp_path):
    rows = train_rows(bert) + [{"text": "good great", "label": 7}]
    path = write_jsonl(tmp_path / "label7.jsonl", rows)
    fails_before_gradients(bert_recipe(bert, data={"path": str(path)}), DataError, str(path),
                           f"row {len(rows) - 1}", "label 7 is outside the label set ['negative', 'positive']",
                           tmp_path=tmp_path)


@pytest.fixture(scope="module")
def tiny_t5(bert, tmp_path_factory):
    """A T5 source/fine-tune/target (random weights: only the checks before gradients need them)."""
    root = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = word_tokenizer(WORDS, style="t5")
    config = tiny_config("t5", tokenizer)
    paths = {"train": bert["train"]}
    for seed, role in enumerate(("source", "source_finetuned", "target")):
        torch.manual_seed(seed)
        paths[role] = save_random_model(root / role, transformers.T5ForConditionalGeneration(config), tokenizer)
    return paths


def test_seq2seq_recipe_without_label_words(tiny_t5, tmp_path):
    raw = recipe_dict("t5", tiny_t5)
    prepare(Recipe.from_dict(raw))  # with label words the same recipe is valid
    del raw["data"]["label_words"]
    fails_before_gradients(raw, DataError, "data.label_words", "text-to-text objective needs the words",
                           tmp_path=tmp_path)


# ---------------------------------------------------------------- recipe fields


def test_alpha_above_one_needs_force(bert, tmp_path, capsys):
    raw = bert_recipe(bert, method={"mask": "naive", "alpha": 1.5})
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    assert_mentions(str(info.value), "method.alpha", "1.5", "outside (0, 1]", "method.force: true")
    with pytest.raises(RecipeError):
        transport(raw, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path / "out")
    recipe_path = write_recipe(tmp_path, raw)
    cli_fails(tmp_path, capsys, recipe_path, "method.alpha", "outside (0, 1]", "--force")

    forced = transport(bert_recipe(bert, method={"mask": "naive", "alpha": 1.5, "force": True}), tmp_path / "forced",
                       progress=False)
    assert forced.report["method"]["alpha"] == 1.5
    out, source = load_file(forced.output_dir / "model.safetensors"), load_file(bert["source"] / "model.safetensors")
    finetuned = load_file(bert["source_finetuned"] / "model.safetensors")
    target = load_file(bert["target"] / "model.safetensors")
    expected = target[QUERY] + 1.5 * (finetuned[f"bert.{QUERY}"] - source[QUERY])
    assert torch.allclose(out[f"bert.{QUERY}"], expected, atol=1e-6)


def test_cli_force_allows_an_alpha_above_one_written_in_the_recipe(bert, tmp_path, capsys):
    recipe_path = write_recipe(tmp_path, bert_recipe(bert, method={"mask": "naive", "alpha": 1.5}))
    out = tmp_path / "out"
    assert main(["run", recipe_path, "-o", str(out), "--no-progress", "--force", "--dry-run"]) == 0, \
        capsys.readouterr().err


@pytest.mark.parametrize("alpha", [0, 0.0, -0.5])
def test_alpha_zero_or_negative(bert, alpha):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(bert_recipe(bert, method={"alpha": alpha}))
    assert_mentions(str(info.value), "method.alpha", "outside (0, 1]")


@pytest.mark.parametrize("alpha", [math.nan, math.inf, "half", True])
def test_alpha_not_a_finite_number(bert, alpha):
    with pytest.raises(RecipeError, match=r"method\.alpha: must be"):
        Recipe.from_dict(bert_recipe(bert, method={"alpha": alpha, "force": True}))


@pytest.mark.parametrize("section,bad,where,suggestion", [
    (None, "methdo", "recipe", "method"),
    (None, "objectve", "recipe", "objective"),
    ("method", "alpah", "method", "alpha"),
    ("data", "samples_per_clas", "data", "samples_per_class"),
    ("output", "dtyp", "output", "dtype"),
])
def test_unknown_recipe_key_suggests_the_closest(bert, tmp_path, capsys, section, bad, where, suggestion):
    raw = bert_recipe(bert)
    if section is None:
        raw[bad] = raw.pop(suggestion) if suggestion in raw else "x"
    else:
        raw[section] = {**raw.get(section, {}), bad: 1}
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    assert_mentions(str(info.value), f"{where}: unknown key {bad!r}", f"Did you mean {suggestion!r}?")
    recipe_path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as from_file:
        Recipe.from_yaml(recipe_path)
    assert_mentions(str(from_file.value), recipe_path, f"unknown key {bad!r}", f"Did you mean {suggestion!r}?")
    cli_fails(tmp_path, capsys, recipe_path, f"unknown key {bad!r}", f"Did you mean {suggestion!r}?")


def test_unknown_key_in_a_model_reference(bert):
    raw = bert_recipe(bert, models={"target": {"path": str(bert["target"]), "revison": "main"}})
    with pytest.raises(RecipeError, match=r"models\.target: unknown key 'revison'\. Did you mean 'revision'\?"):
        Recipe.from_dict(raw)


def test_unknown_mask_name(bert, tmp_path, capsys):
    raw = bert_recipe(bert, method={"mask": "gradfx"})
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    assert_mentions(str(info.value), "method.mask", "'gradfx' is not one of", "Did you mean 'gradfix'?")
    cli_fails(tmp_path, capsys, write_recipe(tmp_path, raw), "method.mask", "'gradfx'")
    with pytest.raises(RecipeError, match=r"method\.mask: .nonsense. is not one of gradfix, mean, oracle, force, random, random-sign, soft, margin, naive"):
        Recipe.from_dict(bert_recipe(bert, method={"mask": "nonsense"}))


@pytest.mark.parametrize("size", ["5XB", "lots", 0, -1])
def test_unreadable_max_shard_size_fails_before_gradients(bert, tmp_path, size):
    raw = bert_recipe(bert, output={"max_shard_size": size})
    with pytest.raises(RecipeError, match=r"output\.max_shard_size: cannot read"):
        transport(raw, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("text,reason", [
    ("models: [source, {target: x\n", "not valid YAML"),
    ("- models\n- data\n", "must be a YAML mapping"),
    ("just a sentence\n", "must be a YAML mapping"),
    ("", "must be a YAML mapping"),
])
def test_recipe_file_not_yaml_or_not_a_mapping(tmp_path, capsys, text, reason):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(path)
    assert_mentions(str(info.value), str(path), reason)
    cli_fails(tmp_path, capsys, path, str(path), reason)


def test_recipe_file_missing(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.from_yaml(path)
    cli_fails(tmp_path, capsys, path, str(path), "not found")


def test_path_objects_in_a_python_recipe_are_written_as_strings(bert):
    recipe = Recipe.from_dict(bert_recipe(bert, data={"path": Path(bert["train"])}))
    assert yaml.safe_load(recipe.to_yaml())["data"]["path"] == str(bert["train"])


# ---------------------------------------------------------------- output folder and interrupted runs


def test_existing_non_empty_output_folder_without_overwrite(bert, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    raw = bert_recipe(bert)
    with pytest.raises(GradFixError) as info:
        transport(raw, out, progress=False)
    assert_mentions(str(info.value), f"output folder {out}", "already exists and is not empty", "overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".out.partial-*"))
    capsys.readouterr()
    assert main(["run", write_recipe(tmp_path, raw), "-o", str(out), "--no-progress"]) == 2
    assert_mentions(capsys.readouterr().err, "gradfix: error:", "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_interrupted_run_leaves_no_output_and_no_partial_folder(bert, tmp_path):
    calls = []

    def loss_fn(model, tokenizer, row):
        calls.append(row["text"])
        if len(calls) == 3:
            raise RuntimeError("interrupted on the 3rd sample")
        enc = tokenizer(row["text"], return_tensors="pt")
        return model(**enc, labels=torch.tensor([row["label"]])).loss

    raw = bert_recipe(bert, objective="callable", model_class="AutoModelForSequenceClassification")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="3rd sample"):
        transport(raw, out, progress=False, loss_fn=loss_fn)
    assert len(calls) == 3
    assert_nothing_written(out)
    assert list(tmp_path.iterdir()) == []


def test_votes_file_for_other_shapes_fails_before_the_merge_writes(bert, tmp_path):
    raw = bert_recipe(bert)
    prepared = prepare(Recipe.from_dict(raw))
    shapes = dict(prepared.voted_shapes)
    votes = {name: torch.zeros(shape, dtype=torch.int8) for name, shape in shapes.items()}
    votes[f"bert.{QUERY}"] = torch.zeros(16, 32, dtype=torch.int8)
    metadata = {"format": "gradfix-votes", "format_version": "1", "n_samples": "4", "aggregation": "majority",
                "objective": "sequence-classification", "target": str(bert["target"]), "target_revision": "",
                "data_source": str(bert["train"]), "data_fingerprint": prepared.samples.fingerprint,
                "params_fingerprint": params_fingerprint(shapes), "library_version": "test"}
    path = VotesFile(votes=votes, metadata=metadata).save(tmp_path / "votes.safetensors")
    out = tmp_path / "out"
    with pytest.raises(VotesFileError) as info:
        transport(raw, out, votes=path, progress=False)
    assert_mentions(str(info.value), str(path), f"tensor 'bert.{QUERY}'", "shape [16, 32]", "[32, 32]",
                    str(bert["target"]))
    assert_nothing_written(out)


def test_atomic_folder_removes_the_partial_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="midway"):
        with atomic_folder(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.partial-")
            (tmp / "model.safetensors").write_bytes(b"half")
            raise ValueError("failed midway")
    assert_nothing_written(out)
    with atomic_folder(out) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "done.txt").read_text() == "ok"


def test_dry_run_prints_the_plan_and_writes_nothing(bert, tmp_path, capsys):
    out = tmp_path / "out"
    recipe_path = write_recipe(tmp_path, bert_recipe(bert))
    assert main(["run", recipe_path, "-o", str(out), "--dry-run", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nothing was computed or written" in printed
    plan = json.loads(printed[: printed.rindex("}") + 1])
    assert plan["ok"] is True and plan["vote_samples"] == 4
    assert plan["tensors"]["transported"] > 20
    assert plan["tensors"]["copied_from_finetune"] == ["classifier.weight", "classifier.bias"]
    assert plan["models"]["models.target"]["path"] == str(bert["target"])
    assert_nothing_written(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


@pytest.mark.parametrize("layout", ["file", "under-file"])
def test_output_path_that_is_or_lies_under_a_file_fails_before_gradients(bert, tmp_path, layout):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if layout == "file" else blocker / "sub"
    calls = []

    def loss_fn(model, tokenizer, row):
        calls.append(row)
        enc = tokenizer(row["text"], return_tensors="pt")
        return model(**enc, labels=torch.tensor([row["label"]])).loss

    raw = bert_recipe(bert, objective="callable", model_class="AutoModelForSequenceClassification")
    with pytest.raises(GradFixError) as info:
        transport(raw, out, loss_fn=loss_fn, progress=False)
    assert str(blocker) in str(info.value)
    assert ("existing file" if layout == "file" else "is a file") in str(info.value)
    assert calls == []  # refused before any gradient work
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ---------------------------------------------------------------- the safety table
# Each case builds its inputs, runs the CLI (exit 2, one `gradfix: error:` line, no traceback) or the Python API
# (a GradFixError subclass), and checks the message, that nothing was written and that every input file under
# the recipe's folders and the test's folder is byte for byte what it was.


def _cli(argv, raw, *fragments, outputs=()):
    return {"argv": [str(a) for a in argv], "raw": raw, "fragments": fragments, "outputs": outputs}


def _api(call, raw, exc, *fragments, outputs=()):
    return {"api": call, "raw": raw, "exc": exc, "fragments": fragments, "outputs": outputs}


def _run(tmp_path, raw, *args):
    return ["run", write_recipe(tmp_path, raw), "--no-progress", *args]


def _out_over_input(which):
    def build(trio, tmp_path):
        raw = bert_recipe(trio, models={"target": str(copy_model(trio, "target", tmp_path))})
        data = tmp_path / "data" / "train.jsonl"
        data.parent.mkdir()
        shutil.copy(trio["train"], data)
        raw["data"]["path"] = str(data)
        recipe = write_recipe(tmp_path, raw)
        out, fragment = {"target": (tmp_path / "target", "is models.target"),
                         "inside-target": (tmp_path / "target" / "out", "lies inside models.target"),
                         "data-folder": (tmp_path / "data", "contains data.path"),
                         "data-file": (data, "is data.path"),
                         "recipe": (Path(recipe), "is the recipe"),
                         "recipe-folder": (tmp_path, "contains")}[which]
        return _cli(["run", recipe, "-o", out, "--overwrite", "--no-progress"], raw, str(out), fragment,
                    "never replaces")
    return build


def _out_is_foreign_folder(trio, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    raw = bert_recipe(trio)
    return _cli(_run(tmp_path, raw, "-o", out, "--overwrite"), raw, str(out), "chapter1.tex",
                "that gradfix did not write")


def _api_output_is_target(trio, tmp_path):
    raw = bert_recipe(trio, models={"target": str(copy_model(trio, "target", tmp_path))})
    return _api(lambda: transport(raw, tmp_path / "target", overwrite=True, progress=False), raw, GradFixError,
                "is models.target", str(tmp_path / "target"))


def _votes_output(kind):
    def build(trio, tmp_path):
        raw = bert_recipe(trio)
        data = tmp_path / "train.jsonl"
        shutil.copy(trio["train"], data)
        raw["data"]["path"] = str(data)
        recipe = write_recipe(tmp_path, raw)
        if kind == "data":
            return _cli(["votes", recipe, "-o", data, "--overwrite"], raw, "votes file", "is data.path")
        if kind == "folder":
            (tmp_path / "votes").mkdir()
            return _cli(["votes", recipe, "-o", tmp_path / "votes"], raw, "is an existing folder, not a file")
        notes = tmp_path / "notes.safetensors"
        notes.write_text("my notes")
        return _cli(["votes", recipe, "-o", notes, "--overwrite"], raw, str(notes), "that gradfix did not write")
    return build


def _sweep_output(kind):
    def build(trio, tmp_path):
        raw = bert_recipe(trio, evaluation={"path": str(trio["test"]), "split": "train", "alphas": [0.5, 1.0]})
        recipe = write_recipe(tmp_path, raw)
        if kind == "recipe":
            return _cli(["sweep", recipe, "--json", recipe, "--overwrite", "--no-progress"], raw, "sweep json",
                        "is the recipe")
        table = tmp_path / "table.md"
        table.write_text("# my own notes\n")
        return _cli(["sweep", recipe, "--markdown", table, "--overwrite", "--no-progress"], raw, str(table),
                    "that gradfix did not write")
    return build


def _votes_inside_output(trio, tmp_path):
    raw = bert_recipe(trio)
    votes_dir = tmp_path / "work"
    votes_dir.mkdir()
    votes = compute_recipe_votes(prepare(Recipe.from_dict(raw)), progress=False).save(votes_dir / "v.safetensors")
    return _cli(_run(tmp_path, raw, "-o", votes_dir, "--overwrite", "--votes", votes), raw,
                "contains the votes file given with --votes", str(votes))


def _recipe_value(key, value, *fragments):
    def build(trio, tmp_path):
        raw = bert_recipe(trio)
        section, _, field_name = key.rpartition(".")
        target = raw.setdefault(section, {}) if section else raw
        target[field_name] = value
        return _cli(_run(tmp_path, raw, "-o", tmp_path / "out", "--dry-run"), raw, *fragments,
                    outputs=[tmp_path / "out"])
    return build


def _infinite_task_weight(trio, tmp_path):
    raw = bert_recipe(trio)
    ft = raw["models"].pop("source_finetuned")
    raw.update(tasks=[{"source_finetuned": ft, "weight": float("inf"), "data": raw.pop("data")}],
               method={"name": "task_arithmetic"})
    return _cli(_run(tmp_path, raw, "-o", tmp_path / "out"), raw, "tasks[0].weight", "finite")


def _metric_script(dry_run):
    def build(trio, tmp_path):
        script = tmp_path / "evil" / "evil.py"
        script.parent.mkdir()
        script.write_text(f"import pathlib\npathlib.Path({str(script.with_name('RAN'))!r}).write_text('x')\n")
        raw = bert_recipe(trio, evaluation={"path": str(trio["test"]), "split": "train",
                                            "metrics": [str(script)]})
        if dry_run:
            return _cli(_run(tmp_path, raw, "-o", tmp_path / "out", "--dry-run"), raw, "not a built-in metric",
                        "trust_remote_code: true", outputs=[tmp_path / "out", script.with_name("RAN")])
        return _api(lambda: prepare(Recipe.from_dict(raw)), raw, RecipeError, str(script), "not a built-in metric",
                    outputs=[script.with_name("RAN")])
    return build


def _remote_code_model(trust):
    def build(trio, tmp_path):
        target = copy_model(trio, "target", tmp_path)
        config = json.loads((target / "config.json").read_text())
        config.update(model_type="shady-bert", auto_map={"AutoConfig": "configuration_shady.ShadyConfig"})
        (target / "config.json").write_text(json.dumps(config))
        (target / "configuration_shady.py").write_text(f"import pathlib\npathlib.Path({str(target / 'RAN')!r})"
                                                       ".write_text('x')\n")
        raw = bert_recipe(trio, models={"target": str(target)}, trust_remote_code=trust)
        return _cli(_run(tmp_path, raw, "-o", tmp_path / "out", "--dry-run"), raw, "models.target",
                    "auto_map", "never under --dry-run", outputs=[tmp_path / "out", target / "RAN"])
    return build


@pytest.fixture(scope="module")
def bert_votes_file(bert, tmp_path_factory):
    """Votes of the bert trio's θ_B (computed once for the table)."""
    path = tmp_path_factory.mktemp("bert-votes") / "votes.safetensors"
    return compute_recipe_votes(prepare(Recipe.from_dict(bert_recipe(bert))), progress=False).save(path)


def _votes_of_another_target(trio, tmp_path, votes_file):
    """θ_B^ft has θ_B's architecture and shapes, but other weights: the votes of θ_B are not its votes."""
    raw = bert_recipe(trio, models={"target": str(trio["target_finetuned"])})
    return _cli(_run(tmp_path, raw, "-o", tmp_path / "out", "--votes", votes_file), raw,
                "computed on another target", str(trio["target"]), str(trio["target_finetuned"]), "--force",
                outputs=[tmp_path / "out"])


def _overflowing_merge(trio, tmp_path):
    """Finite inputs whose sum overflows float32: the output tensor is refused by name, nothing is written."""
    big = 3.0e38
    target, finetuned = copy_model(trio, "target", tmp_path), copy_model(trio, "source_finetuned", tmp_path)
    rewrite_weights(target, lambda s: s[QUERY].view(-1).__setitem__(0, big))
    source = copy_model(trio, "source", tmp_path)
    base = load_file(source / "model.safetensors")[QUERY].view(-1)[0].item()
    rewrite_weights(finetuned, lambda s: s[f"bert.{QUERY}"].view(-1).__setitem__(0, base + big))
    raw = bert_recipe(trio, models={"target": str(target), "source": str(source),
                                    "source_finetuned": str(finetuned)}, method={"mask": "naive", "alpha": 1.0})
    return _cli(_run(tmp_path, raw, "-o", tmp_path / "out"), raw, f"output tensor 'bert.{QUERY}'", "NaN/inf",
                outputs=[tmp_path / "out"])


def _data_file(content, *fragments, binary=False):
    def build(trio, tmp_path):
        data = tmp_path / "train.jsonl"
        if binary:
            data.write_bytes(content)
        else:
            data.write_text(Path(trio["train"]).read_text() + content)
        raw = bert_recipe(trio, data={"path": str(data)})
        return _cli(_run(tmp_path, raw, "-o", tmp_path / "out"), raw, str(data), *fragments,
                    outputs=[tmp_path / "out"])
    return build


SAFETY_CASES = {
    "output-is-target": _out_over_input("target"),
    "output-inside-target": _out_over_input("inside-target"),
    "output-contains-data": _out_over_input("data-folder"),
    "output-is-data-file": _out_over_input("data-file"),
    "output-is-recipe": _out_over_input("recipe"),
    "output-contains-recipe": _out_over_input("recipe-folder"),
    "overwrite-foreign-folder": _out_is_foreign_folder,
    "api-output-is-target": _api_output_is_target,
    "votes-output-is-data": _votes_output("data"),
    "votes-output-is-folder": _votes_output("folder"),
    "votes-output-foreign-file": _votes_output("foreign"),
    "sweep-json-is-recipe": _sweep_output("recipe"),
    "sweep-markdown-foreign": _sweep_output("foreign"),
    "output-contains-votes": _votes_inside_output,
    "bool-string-false": _recipe_value("trust_remote_code", "false", "trust_remote_code", "the string 'false'"),
    "bool-string-no": _recipe_value("allow_pickle", "no", "allow_pickle", "the string 'no'"),
    "bool-string-force": _recipe_value("method.force", "yes", "method.force", "the string 'yes'"),
    "int-as-string": _recipe_value("data.samples_per_class", "2", "data.samples_per_class"),
    "int-as-bool": _recipe_value("data.seed", True, "data.seed"),
    "int-as-float": _recipe_value("vote_batch_size", 1.5, "vote_batch_size"),
    "alpha-nan": _recipe_value("method.alpha", float("nan"), "method.alpha"),
    "alpha-inf": _recipe_value("method.alpha", float("inf"), "method.alpha"),
    "rho-inf": _recipe_value("method.rho", float("inf"), "method.rho"),
    "max-samples-zero": _recipe_value("evaluation", {"split": "train", "max_samples": 0}, "evaluation.max_samples"),
    "prompt-unknown-field": _recipe_value("data.prompt", "{text} {title}", "data.prompt", "title"),
    "prompt-positional": _recipe_value("data.prompt", "{text} {}", "data.prompt"),
    "prompt-pair-without-column": _recipe_value("data.prompt", "{text} {text_pair}", "data.prompt", "text_pair"),
    "path-not-a-string": _recipe_value("data.text_column", 5, "data.text_column"),
    "task-weight-inf": _infinite_task_weight,
    "metric-script-dry-run": _metric_script(True),
    "metric-script-untrusted": _metric_script(False),
    "remote-code-untrusted": _remote_code_model(False),
    "remote-code-dry-run": _remote_code_model(True),
    "overflowing-merge": _overflowing_merge,
    "null-text": _data_file('{"text": null, "label": 1}\n', "row 60", "null"),
    "empty-text": _data_file('{"text": "   ", "label": 0}\n', "row 60", "empty"),
    "null-label": _data_file('{"text": "good", "label": null}\n', "row 60", "label"),
    "broken-json-line": _data_file('{"text": "good", "label": 1\n', ":61:", "not valid JSON"),
    "not-utf8": _data_file(b'{"text": "caf\xe9", "label": 1}\n', ":1:", "UTF-8", binary=True),
}


@pytest.mark.parametrize("name", sorted(SAFETY_CASES) + ["votes-of-another-target"])
def test_safety_table(name, bert, bert_votes_file, tmp_path, capsys):
    if name == "votes-of-another-target":
        case = _votes_of_another_target(bert, tmp_path, bert_votes_file)
    else:
        case = SAFETY_CASES[name](bert, tmp_path)
    roots = input_roots(case["raw"], tmp_path)
    before = snapshot(roots)
    capsys.readouterr()
    if "argv" in case:
        code = main(case["argv"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "gradfix: error:" in err and "Traceback" not in err, err
        message = err
    else:
        with pytest.raises(case["exc"]) as info:
            case["api"]()
        message = str(info.value)
    assert_mentions(message, *case["fragments"])
    assert snapshot(roots) == before, "an input file was changed or removed"
    for path in case["outputs"]:
        assert not Path(path).exists(), f"{path} was written"
    assert not list(tmp_path.rglob("*.partial-*")), "partial outputs left behind"


# ---------------------------------------------------------------- kill -9 and concurrent runs

def _gradfix(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "gradfix_hf", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _complete(folder):
    """A finished output: its report, weights and config are all there and readable."""
    report = json.loads((folder / "gradfix_report.json").read_text())
    return report["totals"]["transported_coordinates"] > 0 and (folder / "model.safetensors").is_file() \
        and (folder / "config.json").is_file()


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_no_output_that_looks_finished(bert, tmp_path):
    recipe = write_recipe(tmp_path, bert_recipe(bert))
    out = tmp_path / "out"
    for moment in ("startup", "writing"):
        process = _gradfix("run", recipe, "-o", out, "--no-progress")
        deadline = time.time() + 120
        if moment == "startup":
            time.sleep(1.0)
        else:  # the moment its hidden partial folder exists: it is writing the output
            while not list(tmp_path.glob(".out.partial-*")) and process.poll() is None and time.time() < deadline:
                time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert not out.exists() or _complete(out)
    assert not out.exists()  # both runs died before their output was moved into place
    done = _gradfix("run", recipe, "-o", out, "--no-progress")
    assert done.wait(timeout=300) == 0, done.stderr.read()[-3000:]
    assert _complete(out)
    assert not list(tmp_path.glob(".out.partial-*")), "the dead runs' partial folders were not cleaned"


@pytest.mark.slow
def test_two_concurrent_runs_on_one_output(bert, tmp_path):
    recipe = write_recipe(tmp_path, bert_recipe(bert))
    out = tmp_path / "out"
    processes = [_gradfix("run", recipe, "-o", out, "--no-progress") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    _, err = next(r for r in results if r[0] == 2)
    assert "gradfix: error:" in err and "Traceback" not in err, err
    assert "already exists" in err or "appeared while this run was writing" in err, err
    assert _complete(out)
    if "appeared" in err:  # the loser finished too: its output is kept beside, under the name it gives
        kept = Path(err.strip().rsplit(" is at ", 1)[1].rstrip("."))
        assert kept != out and _complete(kept)
    assert not list(tmp_path.glob(".out.partial-*"))
