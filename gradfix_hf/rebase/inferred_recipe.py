"""Turn what ``gradfix rebase`` was given into a full recipe: roles, objective, data, splits, ``method: auto``.

Why a recipe: the rebase is then an ordinary run (the same checks, votes, merge, report and card), and the recipe
it ran is written into the output folder, so ``gradfix run OUT/recipe.yaml`` reproduces it and a user can grow
it into a hand-written one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import RecipeError
from ..recipe import ModelRef
from .inference import (Inferred, RebaseInference, RebaseOptions, adapter_facts, choose_splits, infer_base,
                        infer_objective, label_words, model_family)

#: vote samples when the user gives none: N rows of SFT data, or K per class of labelled data
DEFAULT_ROWS = 32
DEFAULT_PER_CLASS = 8
#: objectives whose label is a word the model writes (they need data.label_words)
TEXT_TO_TEXT = ("seq2seq", "causal-lm")


def _absolute(reference: str) -> str:
    """A local folder or file as an absolute path (the recipe then runs from any folder); a Hub id as given."""
    local = Path(reference).expanduser()
    return str(local.resolve()) if local.exists() else reference


def infer_rebase(finetuned: str, onto: str, data: str, options: RebaseOptions = RebaseOptions(), *,
                 token: Optional[str] = None) -> RebaseInference:
    """Everything the rebase of ``finetuned`` onto ``onto`` with ``data`` needs, inferred from small files only
    (configs, adapter config, model card, the data's columns and splits), with the recipe built from it."""
    from ..data import load_split, split_names
    from ..hub.metadata import model_metadata, planned_download

    if options.samples is not None and options.samples < 1:
        raise RecipeError(f"--samples: a positive number of vote samples, got {options.samples!r}.")
    if options.full and options.as_lora is not None:
        raise RecipeError("--full writes full weights and --as-lora a LoRA adapter: give one of them.")
    finetuned, onto, data = _absolute(finetuned), _absolute(onto), _absolute(data)
    ft_folder, _ = model_metadata(ModelRef(finetuned), role="finetuned", token=token)
    base = infer_base(ft_folder, finetuned, options.base)
    base.value = _absolute(base.value)
    adapter = adapter_facts(ft_folder)
    base_folder = model_metadata(ModelRef(base.value), role="base", token=token)[0]
    onto_folder = model_metadata(ModelRef(onto), role="onto", token=token)[0]
    family = model_family(ft_folder, base_folder, finetuned, adapter)

    names = split_names(data, name=options.data_name, token=token)
    splits = choose_splits(names, options, data)
    dataset = load_split(data, name=options.data_name, split=splits["vote"], token=token)
    objective = infer_objective(family, dataset.column_names, options, data)
    sft = objective.value["objective"] == "sft"

    samples = options.samples or (DEFAULT_ROWS if sft else DEFAULT_PER_CLASS)
    data_section: dict = {"path": data, "split": splits["vote"], "seed": options.seed}
    if options.data_name:
        data_section["name"] = options.data_name
    if sft:
        data_section.update(rows=samples, format=objective.value["format"])
    else:
        data_section.update(samples_per_class=samples, text_column=options.text_column,
                            label_column=options.label_column)
        if objective.value["objective"] in TEXT_TO_TEXT:  # the label is a word the model writes
            values = [v for v in dataset.unique(options.label_column) if v is not None]
            data_section["label_words"] = label_words(values, ft_folder, options, data)
    evaluation: dict = {"split": splits["validation"] or "validation", "max_samples": options.max_eval_samples}
    if splits["validation"] is None:  # a seeded carve of the vote split (gradfix_hf/data/holdout.py)
        data_section["validation_size"] = options.validation_size
    if splits["test"]:
        evaluation["test_split"] = splits["test"]
    if options.alphas:
        evaluation["alphas"] = list(options.alphas)
    lora_out = adapter is not None and not options.full or options.as_lora is not None
    rank = options.as_lora or (adapter or {}).get("r")
    if lora_out and not rank:
        raise RecipeError(f"{finetuned}: its adapter config names no rank r; give the output's with --as-lora RANK.")
    recipe = {
        "objective": objective.value["objective"],
        "models": {"source": base.value, "source_finetuned": finetuned, "target": onto},
        "data": data_section,
        "method": {"name": "auto"},
        "evaluation": evaluation,
        **({"output": {"as_lora": {"rank": int(rank)}}} if lora_out else {}),
        **({"allow_pickle": True} if options.allow_pickle else {}),
        **({"trust_remote_code": True} if options.trust_remote_code else {}),
    }
    carve = f"a carve of {options.validation_size} of {splits['vote']} (seed {options.seed})"
    used = {"vote": splits["vote"], "validation": splits["validation"] or carve, "test": splits["test"]}
    downloads = {role: planned_download(ModelRef(path), token=token, allow_pickle=options.allow_pickle,
                                        metadata_folder=folder)
                 for role, path, folder in (("base", base.value, base_folder), ("finetuned", finetuned, ft_folder),
                                            ("onto", onto, onto_folder))}
    objective = Inferred(objective.value["objective"] + (f" ({objective.value['format']})" if sft else ""),
                         objective.source)
    return RebaseInference(finetuned=finetuned, onto=onto, data=data, base=base, adapter=adapter, family=family,
                           objective=objective, splits=used,
                           output=f"LoRA adapter r={rank}" if lora_out else "full weights", recipe=recipe,
                           downloads=downloads)
