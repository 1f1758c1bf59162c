"""Bad data is refused before any work, naming the file, the row or line, and the column; texts are truncated to
what θ_B accepts (``data.max_length`` capped at the model's positions, the recipe untouched, the cap reported)."""
import json
import random

import datasets
import pytest
import torch
import transformers
import yaml

from conftest import LABELS, NEUTRAL, WORDS, recipe_dict, word_tokenizer
from gradfix_hf import Recipe, prepare, transport
from gradfix_hf.cli import main
from gradfix_hf.data import evaluation_samples, label_space_from_rows, load_split, select_per_class
from gradfix_hf.errors import DataError
from gradfix_hf.objectives import CLIPZeroShotObjective, SequenceClassificationObjective
from gradfix_hf.objectives.positions import capped_max_length, model_positions
from gradfix_hf.recipe import DataConfig
from gradfix_hf.transport import compute_recipe_votes


def _rows(n=8, **change):
    """``n`` rows per class of short texts; ``change`` maps a row index to fields written over that row."""
    rows = [{"text": f"{'good' if i % 2 else 'bad'} kalo {i}", "pair": f"mika {i}", "label": i % 2}
            for i in range(2 * n)]
    for index, fields in change.items():
        rows[int(index.lstrip("r"))].update(fields)
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _labels(cfg):
    config = transformers.BertConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return SequenceClassificationObjective.label_space(cfg, config)


def _select(path, **cfg):
    cfg = DataConfig(path=str(path), samples_per_class=2, **cfg)
    return select_per_class(load_split(str(path)), cfg, _labels(cfg))


def _mentions(message, *fragments):
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in: {message}"


# ---------------------------------------------------------------- null, empty and non-text values


@pytest.mark.parametrize("value,reason", [(None, "the text is null"), ("", "empty or whitespace"),
                                          ("  \t ", "empty or whitespace")])
def test_null_or_empty_text_of_the_vote_samples_names_file_row_and_column(tmp_path, value, reason):
    path = _jsonl(tmp_path / "train.jsonl", _rows(r5={"text": value}))
    with pytest.raises(DataError) as info:
        _select(path)
    _mentions(str(info.value), str(path), "row 5", "column 'text'", reason)


def test_null_text_is_no_longer_voted_as_the_word_none(tmp_path):
    """Every row is checked, not only the chosen ones, so the error does not depend on the seed."""
    path = _jsonl(tmp_path / "train.jsonl", _rows(n=50, r77={"text": None}))
    for seed in range(3):
        with pytest.raises(DataError, match="row 77 of text column 'text': the text is null"):
            _select(path, seed=seed)


def test_empty_texts_in_a_csv_list_their_rows(tmp_path):
    path = tmp_path / "train.csv"
    datasets.Dataset.from_list(_rows(r1={"text": ""}, r2={"text": " "}, r9={"text": None})).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        _select(path)
    _mentions(str(info.value), str(path), "text column 'text'")  # pandas reads an empty cell as null
    assert "row 1" in str(info.value) or "rows 1" in str(info.value)


def test_null_text_pair_names_the_pair_column(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", _rows(r3={"pair": None}))
    with pytest.raises(DataError) as info:
        _select(path, text_pair_column="pair", prompt="{text} / {text_pair}")
    _mentions(str(info.value), str(path), "row 3", "column 'pair'", "null")
    _select(path)  # the pair column is not read without data.text_pair_column


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_null_label_names_file_row_and_column(tmp_path, suffix):
    rows = _rows(r4={"label": None})
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        datasets.Dataset.from_list(rows).to_csv(path, index=False)
    else:
        _jsonl(path, rows)
    with pytest.raises(DataError) as info:
        _select(path)
    _mentions(str(info.value), str(path), "row 4", "label column 'label'", "null")


def test_csv_label_column_with_mixed_junk_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.csv"
    path.write_text("text,label\n" + "".join(f"word {i},{i % 2}\n" for i in range(8)) + "word 8,n/a?\nword 9,1.0\n")
    with pytest.raises(DataError) as info:
        _select(path)
    _mentions(str(info.value), str(path), "row 8", "label 'n/a?' is outside the label set")


def test_text_column_of_numbers_or_mixed_json_values(tmp_path):
    numbers = _jsonl(tmp_path / "numbers.jsonl", [{"id": i, "text": i, "label": i % 2} for i in range(8)])
    with pytest.raises(DataError, match="text column 'text' holds int64 values, not text"):
        _select(numbers)
    mixed = _jsonl(tmp_path / "mixed.jsonl", _rows(r6={"text": 17}))
    with pytest.raises(DataError) as info:
        _select(mixed)
    _mentions(str(info.value), str(mixed), "row 6", "column 'text'", "not a string")


def test_evaluation_split_checks_the_rows_it_scores(tmp_path):
    path = _jsonl(tmp_path / "test.jsonl", _rows(n=4, r6={"text": ""}))
    cfg = DataConfig(path="train.jsonl")
    dataset = load_split(str(path))
    scored = evaluation_samples(dataset, cfg, _labels(cfg), 6, str(path))  # row 6 is not scored
    assert len(scored) == 6
    with pytest.raises(DataError) as info:
        evaluation_samples(dataset, cfg, _labels(cfg), None, str(path))
    _mentions(str(info.value), "evaluation", str(path), "row 6", "column 'text'", "empty")
    with pytest.raises(DataError, match="row 2 of label column 'label'"):
        evaluation_samples(load_split(str(_jsonl(tmp_path / "l.jsonl", _rows(r2={"label": None})))), cfg,
                           _labels(cfg), None, "l.jsonl", "evaluation.test_split")


def test_clip_and_user_labels_skip_null_labels_then_refuse_them():
    rows = [{"image": f"{i}.png", "label": ["red", "blue", None][i % 3]} for i in range(9)]
    dataset = datasets.Dataset.from_list(rows)
    cfg = DataConfig(path="x", samples_per_class=2)
    labels = CLIPZeroShotObjective.label_space(cfg, None, dataset)
    assert labels.names == ["blue", "red"]
    assert label_space_from_rows(dataset, "label").names == ["blue", "red"]
    with pytest.raises(DataError, match="rows 2, 5, 8 of label column 'label': the label is null"):
        select_per_class(dataset, cfg, labels, columns=["image", "label"])


# ---------------------------------------------------------------- files datasets cannot parse


def test_broken_json_line_names_file_and_line(tmp_path):
    lines = [json.dumps(r) for r in _rows()]
    lines[6] = lines[6][:-1]  # the closing brace is missing
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_split(str(path))
    _mentions(str(info.value), f"data.path: {path}:7: not valid JSON")
    path.write_text("\n".join(lines[:6] + ["[1, 2]"] + lines[7:]) + "\n")
    with pytest.raises(DataError, match=r":7: an array, not an object"):
        load_split(str(path), where="evaluation")


def test_broken_json_document_names_its_line(tmp_path):
    path = tmp_path / "train.json"
    text = json.dumps(_rows(), indent=1).splitlines()
    assert text[7] == '  "text": "good kalo 1",'
    text[7] = text[7].rstrip(",")  # a missing comma between two members: the parser stops on the next line
    path.write_text("\n".join(text))
    with pytest.raises(DataError) as info:
        load_split(str(path))
    _mentions(str(info.value), f"data.path: {path}:9: not valid JSON (Expecting ',' delimiter")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
def test_non_utf8_bytes_name_file_and_line(tmp_path, suffix):
    sep = "\t" if suffix == ".tsv" else ","
    if suffix in (".csv", ".tsv"):
        lines = [f"text{sep}label"] + [f"word {i}{sep}{i % 2}" for i in range(8)]
        bad = 4
    else:
        lines = [json.dumps(r) for r in _rows()]
        bad = 3
    data = "\n".join(lines).encode()
    lines_bytes = data.split(b"\n")
    lines_bytes[bad - 1] = lines_bytes[bad - 1].replace(b"word", b"w\xe9rd").replace(b"bad", b"b\xe9d")
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(b"\n".join(lines_bytes) + b"\n")
    with pytest.raises(DataError) as info:
        load_split(str(path), where="evaluation")
    _mentions(str(info.value), f"evaluation.path: {path}:{bad}: not valid UTF-8", "0xe9")


def test_csv_row_with_extra_fields_names_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\na b,1\nc d,0,extra\n")
    with pytest.raises(DataError, match=rf"data.path: {path}:3: not valid CSV"):
        load_split(str(path))


def _write_recipe(tmp_path, raw):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_reports_a_broken_data_file_without_a_traceback(trios, tmp_path, capsys):
    lines = [json.dumps(r) for r in _rows()]
    lines[2] = lines[2].replace('"label"', "label")  # an unquoted key
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    recipe = _write_recipe(tmp_path, recipe_dict("bert", trios("bert"), data={"path": str(path)}))
    capsys.readouterr()
    assert main(["run", recipe, "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    _mentions(err, "gradfix: error:", f"{path}:3: not valid JSON")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_reports_a_null_text_in_the_test_split(trios, tmp_path, capsys):
    trio = trios("bert")
    test = _jsonl(tmp_path / "test.jsonl", _rows(r3={"text": None}))
    recipe = _write_recipe(tmp_path, recipe_dict("bert", trio, evaluation={"path": str(trio["test"]),
                                                                            "test_path": str(test)}))
    capsys.readouterr()
    assert main(["run", recipe, "-o", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    _mentions(err, "gradfix: error: evaluation.test_split", str(test), "row 3", "column 'text'", "null")
    assert "Traceback" not in err


def test_prepare_refuses_a_null_text_of_the_vote_samples(trios, tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", _rows(r7={"text": None}))
    with pytest.raises(DataError) as info:
        prepare(Recipe.from_dict(recipe_dict("bert", trios("bert"), data={"path": str(path)})))
    _mentions(str(info.value), "data (", str(path), "row 7", "column 'text'")


# ---------------------------------------------------------------- max_length capped at θ_B's positions

POSITIONS = 16


def _long_rows(n=6, words=30, seed=0):
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(NEUTRAL) for _ in range(words)) + (" good" if i % 2 else " bad"),
             "label": i % 2} for i in range(2 * n)]


@pytest.fixture(scope="module")
def short_models(tmp_path_factory):
    """A BERT and a GPT-2 trio with only 16 positions (random weights) and data of ~32-token texts."""
    root = tmp_path_factory.mktemp("short-models")
    trios = {}
    for kind in ("bert", "gpt2"):
        tokenizer = word_tokenizer(WORDS, style=kind)
        if kind == "bert":
            config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=POSITIONS, pad_token_id=tokenizer.pad_token_id,
                                             id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
            classes = (transformers.BertModel, transformers.BertForSequenceClassification, transformers.BertModel)
        else:
            config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                             n_positions=POSITIONS, bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            classes = (transformers.GPT2LMHeadModel,) * 3
        trio = {"train": _jsonl(root / f"{kind}-train.jsonl", _long_rows()),
                "test": _jsonl(root / f"{kind}-test.jsonl", _long_rows(n=3, seed=1))}
        for seed, (role, cls) in enumerate(zip(("source", "source_finetuned", "target"), classes)):
            torch.manual_seed(seed)
            trio[role] = root / f"{kind}-{role}"
            cls(config).save_pretrained(trio[role])
            tokenizer.save_pretrained(trio[role])
            if kind == "gpt2":
                transformers.GenerationConfig.from_model_config(config).save_pretrained(trio[role])
        trios[kind] = trio
    return trios


def test_max_length_is_capped_at_the_targets_positions_and_the_votes_run(short_models, tmp_path):
    trio = short_models["bert"]
    raw = recipe_dict("bert", trio, evaluation={"path": str(trio["test"]), "few_shot_steps": 0})
    prepared = prepare(Recipe.from_dict(raw))
    assert prepared.recipe.data.max_length == 128 and prepared.task.data.max_length == 128  # the recipe is data
    assert prepared.objective.data.max_length == POSITIONS
    assert prepared.data_notes == {"max_length": {"requested": 128, "used": POSITIONS,
                                                  "why": f"models.target has {POSITIONS} positions"}}
    assert prepared.summary()["data_notes"] == prepared.data_notes
    lengths = [example["input_ids"].shape[-1] for example in prepared.examples]
    assert max(lengths) == POSITIONS  # the texts are longer: truncated, not passed whole
    votes = compute_recipe_votes(prepared, progress=False)
    assert votes.n_samples == len(prepared.examples)
    result = transport(raw, tmp_path / "out", progress=False)  # votes, held-out scores and merge on long texts
    assert result.evaluation["n_samples"] == 6


def test_causal_lm_keeps_room_for_the_label_word(short_models):
    trio = short_models["gpt2"]
    prepared = prepare(Recipe.from_dict(recipe_dict("gpt2", trio)))
    note = prepared.data_notes["max_length"]
    assert note["requested"] == 128 and note["used"] == POSITIONS - 1
    assert note["why"] == f"models.target has {POSITIONS} positions, 1 kept for the label words"
    assert max(example["input_ids"].shape[-1] for example in prepared.examples) == POSITIONS
    compute_recipe_votes(prepared, progress=False)


def test_no_note_when_the_model_has_room(trios):
    prepared = prepare(Recipe.from_dict(recipe_dict("t5", trios("t5"))))  # T5: relative positions, no limit
    assert prepared.data_notes == {} and "data_notes" not in prepared.summary()
    assert prepared.objective.data.max_length == 128


def test_model_positions_of_configs():
    assert model_positions(transformers.BertConfig(max_position_embeddings=64)) == 64
    assert model_positions(transformers.GPT2Config(n_positions=32)) == 32
    assert model_positions(transformers.T5Config()) is None
    assert model_positions(transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    clip = transformers.CLIPConfig(text_config={"max_position_embeddings": 20})
    assert model_positions(clip) == 20
    assert capped_max_length(128, transformers.BertConfig(max_position_embeddings=512)) == (128, None)
    with pytest.raises(DataError, match="no room left for the text"):
        capped_max_length(128, transformers.GPT2Config(n_positions=3), reserve=2)
