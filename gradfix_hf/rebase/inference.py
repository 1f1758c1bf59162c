"""What ``gradfix rebase`` infers from a fine-tune, a new base and a data set: the old base θ_A, the objective and
the data shape, the splits — and the recipe that says all of it.

Why: the one-line rebase users ask for must not guess silently. Every inference here is read from a file the user
already has (the adapter's ``base_model_name_or_path``, the card's ``base_model``, ``config.json``'s architecture,
the data's columns and splits), is recorded with where it came from, and when two answers are possible the error
names the flag that settles it. Nothing here reads a weight.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataError, RecipeError
from ..objectives.chat import format_columns, matching_formats

#: the split names taken as a validation split (in this order), and as the test split
VALIDATION_SPLITS = ("validation", "valid", "dev", "val")
TEST_SPLIT = "test"
#: a PEFT adapter's ``task_type`` → the model family it fine-tunes
ADAPTER_FAMILIES = {"SEQ_CLS": "classifier", "CAUSAL_LM": "causal", "SEQ_2_SEQ_LM": "seq2seq"}


@dataclass(frozen=True)
class RebaseOptions:
    """What the user said (the CLI flags, the Python keyword arguments); None means "infer it"."""

    base: Optional[str] = None
    objective: Optional[str] = None
    format: Optional[str] = None
    samples: Optional[int] = None
    split: Optional[str] = None
    data_name: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    validation_size: Union[int, float] = 0.2
    max_eval_samples: Optional[int] = 200
    alphas: Optional[list[float]] = None
    label_words: Optional[dict] = None
    as_lora: Optional[int] = None
    full: bool = False
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class Inferred:
    """One inferred value and where it came from (what ``--dry-run`` and the report print)."""

    value: Any
    source: str

    def as_dict(self) -> dict:
        return {"value": self.value, "from": self.source}


@dataclass
class RebaseInference:
    """Everything ``gradfix rebase`` inferred, and the recipe built from it."""

    finetuned: str
    onto: str
    data: str
    base: Inferred
    adapter: Optional[dict]  # {"r", "task_type"} of a LoRA θ_A^ft, None for a full fine-tune
    family: Inferred  # classifier | causal | seq2seq
    objective: Inferred
    splits: dict[str, str]  # {"vote", "validation", "test"}: the split (or the carve) each role reads
    output: str  # "lora r=8" or "full weights"
    recipe: dict
    downloads: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"finetuned": self.finetuned, "onto": self.onto, "data": self.data, "base": self.base.as_dict(),
                "adapter": self.adapter, "model_family": self.family.as_dict(), "objective": self.objective.as_dict(),
                "splits": self.splits, "output": self.output, "downloads": self.downloads, "recipe": self.recipe}


def infer_base(folder: Path, finetuned: str, override: Optional[str]) -> Inferred:
    """θ_A: ``--base``, else the adapter's ``base_model_name_or_path``, else the card's single ``base_model``."""
    from ..hub.metadata import adapter_base, card_base_models

    if override:
        return Inferred(override, "--base")
    named = adapter_base(folder)
    if named:
        return Inferred(named, "adapter_config.json (base_model_name_or_path)")
    bases = card_base_models(folder)
    if len(bases) == 1:
        return Inferred(bases[0], "model card (base_model)")
    if len(bases) > 1:
        raise RecipeError(f"{finetuned}: its model card names {len(bases)} base models ({', '.join(bases)}); say "
                          "which one it was fine-tuned from with --base (base=... from Python).")
    raise RecipeError(f"{finetuned}: cannot tell which model it was fine-tuned from (no adapter_config.json and no "
                      "base_model in its model card); give the old base with --base (base=... from Python).")


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def adapter_facts(folder: Path) -> Optional[dict]:
    """``{"r", "task_type"}`` of a PEFT adapter's config in ``folder``; None for a full model."""
    if not (folder / "adapter_config.json").is_file():
        return None
    raw = _read_json(folder / "adapter_config.json")
    return {"r": raw.get("r"), "task_type": raw.get("task_type")}


def model_family(finetuned_folder: Path, base_folder: Optional[Path], finetuned: str,
                 adapter: Optional[dict] = None) -> Inferred:
    """classifier | causal | seq2seq: from a LoRA adapter's ``task_type`` (``adapter``: :func:`adapter_facts`),
    else the architecture in the fine-tune's config.json (the base's, for an adapter)."""
    task_type = (adapter or {}).get("task_type")
    if task_type in ADAPTER_FAMILIES:
        return Inferred(ADAPTER_FAMILIES[task_type], f"adapter_config.json (task_type {task_type})")
    config_folder = base_folder if adapter is not None else finetuned_folder
    config = _read_json(config_folder / "config.json") if config_folder is not None else {}
    architecture = next(iter(config.get("architectures") or []), "")
    where = f"config.json ({architecture or config.get('model_type', 'no architecture')})"
    if architecture.endswith("ForSequenceClassification"):
        return Inferred("classifier", where)
    if config.get("is_encoder_decoder") or architecture.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")):
        return Inferred("seq2seq", where)
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return Inferred("causal", where)
    raise RecipeError(f"{finetuned}: cannot tell its task from {where}; say it with --objective "
                      "(sequence-classification, causal-lm, seq2seq or sft).")


def infer_objective(family: Inferred, columns: list[str], options: RebaseOptions, data: str) -> Inferred:
    """The recipe objective (and, for SFT, the data format) from the model family and the data's columns."""
    labelled = options.text_column in columns and options.label_column in columns
    if options.objective:
        objective = options.objective
        source = "--objective"
    elif family.value == "classifier":
        objective, source = "sequence-classification", family.source
    elif family.value == "seq2seq":
        objective, source = "seq2seq", f"{family.source} and the text/label columns"
    else:
        shapes = matching_formats(columns, text_column=options.text_column)
        if options.format is None and len(shapes) == 1 and shapes[0] == "text" and labelled:
            objective, source = "causal-lm", f"{family.source} and the text/label columns (a label to verbalise)"
        else:
            objective, source = "sft", f"{family.source} and the data's columns ({', '.join(shapes) or 'none'})"
    if objective != "sft":
        if options.format is not None:
            raise RecipeError(f"--format {options.format}: a data format is for SFT data; objective {objective!r} "
                              "reads a text column and a label column.")
        if not labelled:
            raise DataError(f"{data}: objective {objective!r} needs a text column {options.text_column!r} and a label "
                            f"column {options.label_column!r}; the data has {columns}. Name them with --text-column "
                            "and --label-column.")
        return Inferred({"objective": objective, "format": None}, source)
    return Inferred({"objective": "sft", "format": sft_format(columns, options, data)}, source)


def sft_format(columns: list[str], options: RebaseOptions, data: str) -> str:
    """messages | prompt-completion | text: the one shape the columns hold (TRL's conventions, as
    ``objectives.chat`` reads them), or ``--format``."""
    shapes = matching_formats(columns, text_column=options.text_column)
    if options.format is not None:
        if options.format not in shapes:
            needed = ", ".join(format_columns(text_column=options.text_column).get(options.format, (options.format,)))
            raise DataError(f"{data}: --format {options.format} needs the column(s) {needed}; the data has {columns}.")
        return options.format
    if not shapes:
        raise DataError(f"{data}: no SFT data shape in its columns {columns}: expected a 'messages' column, "
                        "'prompt' and 'completion' columns, or a 'text' column (TRL's conventions).")
    if len(shapes) > 1:
        raise DataError(f"{data}: its columns {columns} hold {len(shapes)} data shapes ({', '.join(shapes)}); say "
                        "which one to train on with --format " + " | ".join(shapes) + ".")
    return shapes[0]


def label_words(values: list, finetuned_folder: Path, options: RebaseOptions, data: str) -> dict:
    """The words a text-to-text objective produces for each label: ``--label-words``, else the labels themselves
    when they are strings, else the fine-tune's ``id2label`` when it names them (not ``LABEL_0``...)."""
    if options.label_words:
        missing = [v for v in values if v not in options.label_words and str(v) not in map(str, options.label_words)]
        if missing:
            raise DataError(f"{data}: --label-words gives no word for the label(s) {sorted(map(str, missing))}.")
        return dict(options.label_words)
    if values and all(isinstance(v, str) and v.strip() for v in values):
        return {v: v for v in sorted(values)}
    id2label = _read_json(finetuned_folder / "config.json").get("id2label") or {}
    words = {int(k): w for k, w in id2label.items() if str(k).isdigit() and isinstance(w, str)}
    if words and not all(w == f"LABEL_{k}" for k, w in words.items()) and all(v in words for v in values):
        return words
    raise DataError(f"{data}: the labels {sorted(map(str, values))[:6]} are not words, and a text-to-text objective "
                    "must produce each label as words; give them with --label-words, e.g. 0=negative,1=positive.")


def choose_splits(names: list[str], options: RebaseOptions, data: str) -> dict[str, Optional[str]]:
    """Which split votes (``--split``, else ``train``, else the only one), which validates (a split named like
    validation, else a carve of the vote split) and which tests (``test``, when there is one)."""
    if options.split is not None:
        if options.split not in names:
            raise DataError(f"{data}: no split {options.split!r} (splits: {', '.join(names)}).")
        vote = options.split
    elif "train" in names or len(names) == 1:
        vote = "train" if "train" in names else names[0]
    else:
        raise DataError(f"{data}: no 'train' split among {', '.join(names)}; say which split votes with --split.")
    validation = next((n for n in VALIDATION_SPLITS if n in names and n != vote), None)
    test = TEST_SPLIT if TEST_SPLIT in names and TEST_SPLIT != vote else None
    return {"vote": vote, "validation": validation, "test": test}
