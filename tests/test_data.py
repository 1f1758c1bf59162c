"""Labelled samples: every local format, dataset folders and splits, seeded per-class sampling, label mapping."""
import json

import datasets
import pytest
from transformers import BertConfig

from gradfix_hf.data import load_split, select_per_class
from gradfix_hf.errors import DataError
from gradfix_hf.objectives import Seq2SeqObjective, SequenceClassificationObjective
from gradfix_hf.recipe import DataConfig

ROWS = [{"sentence": f"s{i} {'good' if i % 2 else 'bad'}", "other": f"p{i}", "y": i % 2} for i in range(12)]
LABELS = {0: "negative", 1: "positive"}


def _config():
    return BertConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_file_formats(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    frame = datasets.Dataset.from_list(ROWS)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".jsonl":
        frame.to_json(path, lines=True)
    else:
        frame.to_parquet(path)
    loaded = load_split(str(path))
    assert len(loaded) == 12 and loaded[3]["sentence"] == ROWS[3]["sentence"] and loaded[3]["y"] == 1


def test_saved_dataset_dict_and_folder_of_split_files(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                               "validation": datasets.Dataset.from_list(ROWS[8:])})
    dd.save_to_disk(tmp_path / "saved")
    assert len(load_split(str(tmp_path / "saved"), split="validation")) == 4
    folder = tmp_path / "files"
    folder.mkdir()
    datasets.Dataset.from_list(ROWS[:8]).to_csv(folder / "train.csv", index=False)
    datasets.Dataset.from_list(ROWS[8:]).to_csv(folder / "test.csv", index=False)
    assert len(load_split(str(folder), split="test")) == 4
    with pytest.raises(DataError, match="split 'nope'"):
        load_split(str(folder), split="nope")


def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(DataError, match="unsupported extension '.xml'"):
        load_split(str(tmp_path / "data.xml"))
    with pytest.raises(DataError, match="does not exist"):
        load_split(str(tmp_path / "missing.csv"))


def test_per_class_sampling_is_stratified_and_seeded():
    ds = datasets.Dataset.from_list(ROWS)
    cfg = DataConfig(path="x", text_column="sentence", label_column="y", samples_per_class=3, seed=1)
    labels = SequenceClassificationObjective.label_space(cfg, _config())
    first = select_per_class(ds, cfg, labels)
    again = select_per_class(ds, cfg, labels)
    other = select_per_class(ds, DataConfig(**{**cfg.__dict__, "seed": 2}), labels)
    assert first.labels.count(0) == 3 and first.labels.count(1) == 3
    assert first.rows == again.rows and first.fingerprint == again.fingerprint
    assert first.rows != other.rows and first.fingerprint != other.fingerprint
    assert all(row["y"] == label for row, label in zip(first.rows, first.labels))


def test_string_labels_map_to_the_finetune_label_names():
    rows = [{"text": f"t{i}", "label": LABELS[i % 2]} for i in range(6)]
    cfg = DataConfig(path="x", samples_per_class=2)
    labels = SequenceClassificationObjective.label_space(cfg, _config())
    picked = select_per_class(datasets.Dataset.from_list(rows), cfg, labels)
    assert sorted(picked.labels) == [0, 0, 1, 1]
    remapped = DataConfig(path="x", samples_per_class=2, label_words={"neg": "negative", "pos": "positive"})
    rows = [{"text": f"t{i}", "label": ["neg", "pos"][i % 2]} for i in range(6)]
    labels = SequenceClassificationObjective.label_space(remapped, _config())
    assert sorted(select_per_class(datasets.Dataset.from_list(rows), remapped, labels).labels) == [0, 0, 1, 1]
    with pytest.raises(DataError, match="'neutral' is not a label of the fine-tune"):
        SequenceClassificationObjective.label_space(DataConfig(path="x", label_words={2: "neutral"}), _config())


def test_verbalised_labels_and_text_pairs():
    cfg = DataConfig(path="x", text_column="sentence", text_pair_column="other", label_column="y",
                     prompt="premise: {text} hypothesis: {text_pair}", label_words={0: "no", "1": "yes"},
                     samples_per_class=2)
    labels = Seq2SeqObjective.label_space(cfg, _config())
    assert labels.names == ["no", "yes"]
    assert labels.index(1, "row") == 1 and labels.index("0", "row") == 0
    objective = Seq2SeqObjective(cfg, tokenizer=None, labels=labels)
    assert objective.text_of(ROWS[5]) == "premise: s5 good hypothesis: p5"
    with pytest.raises(DataError, match=r"label 7 is outside the label set \['no', 'yes'\]"):
        labels.index(7, "data row 3")
