"""The output folder's model card (README.md): Hub metadata, method, results, drift, provenance and recipe; and
the default commit message of a push, made from the same report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from ..merge import drift_table
from ..plan import ROLE_NAMES
from ..recipe import FewShotStage
from .auto import at_alpha, choice_table
from .scores import evaluation_heading

PAPER_URL = "https://arxiv.org/abs/2510.09658"
TAGS = ["gradfix", "merge", "task-vector-transport"]


def _is_hub_id(model: dict) -> bool:
    return bool(model.get("repo_id"))


def _results_table(evaluation: Optional[dict]) -> str:
    """Every metric of every scored model (reports written before ``scores`` existed: their one metric)."""
    if not evaluation:
        return "No held-out evaluation was configured for this run."
    metrics = evaluation.get("metrics") or [evaluation["metric"]]
    heading = evaluation_heading(evaluation, what="scores", code=True)
    lines = [heading[0].upper() + heading[1:] + ":", "",
             "| model | α | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for row in evaluation["rows"]:
        alpha = "–" if row.get("alpha") is None else f"{row['alpha']:g}"
        scores = row.get("scores") or {evaluation["metric"]: row["score"]}
        cells = " | ".join("–" if scores.get(m) is None else f"{scores[m]:.4f}" for m in metrics)
        lines.append(f"| {row['model']} | {alpha} | {cells} |")
    return "\n".join(lines)


def _auto_section(report: dict) -> str:
    """How ``method: auto`` chose the mask and α (empty for other methods)."""
    auto = report.get("auto")
    if not auto:
        return ""
    evaluation = report.get("evaluation") or {}
    if evaluation.get("split_role") == "test":
        scored = (f"The results above score the written model and the baselines on the test split "
                  f"`{evaluation['split']}`, which took no part in the choice.")
    else:
        scored = ("The same split scored the results above, so they are optimistic for the chosen row; "
                  "`evaluation.test_path` (or `test_split`) adds a test split, and `gradfix sweep` reports one.")
    return f"""## Automatic choice (`method: auto`)

The mask and α were picked on the validation split `{auto['split']}` ({auto['n_samples']} samples, {auto['metric']})
among these candidates, each at its own best α on the grid {', '.join(f'{a:g}' for a in auto['alphas'])}; the
written model is the one in bold ({auto['label']}{at_alpha(auto['alpha'], ', α = ')}). {scored}

{choice_table(auto, auto['metric'])}

"""


def _rebase_section(report: dict) -> str:
    """What ``gradfix rebase`` inferred, the choice it made and by how much (empty for other runs)."""
    rebase = report.get("rebase")
    if not rebase:
        return ""
    auto, splits = report.get("auto") or {}, rebase["splits"]
    margin = auto.get("margin") or {}
    won = ""
    if margin:
        won = (f" `method: auto` chose {auto['label']}{at_alpha(auto['alpha'])}: {auto['metric']} "
               f"{auto['validation']:.4f} on validation, better than {margin['runner_up']} by "
               f"{margin['difference']:.4f}" + (f" and than naive addition by {margin['naive_difference']:.4f}"
                                                if "naive_difference" in margin else "") + ".")
    test = f", test on `{splits['test']}`" if splits.get("test") else ""
    return f"""## Rebase

`{rebase['finetuned']}`, a fine-tune of the old base `{rebase['base']['value']}` (from {rebase['base']['from']}), \
rebased onto the new base `{rebase['onto']}` with `gradfix rebase` and the data `{rebase['data']}`. Objective \
{rebase['objective']['value']} (from {rebase['objective']['from']}); votes on `{splits['vote']}`, choice on \
{splits['validation']}{test}; output: {rebase['output']}.{won}
`gradfix run recipe.yaml -o OUT` reruns it (`recipe.yaml` in this folder).

"""


def _model_name(model: dict) -> str:
    return model.get("repo_id") or model["path"]


def _tasks(report: dict) -> list[dict]:
    return report.get("tasks") or [{"name": "task0", "models": report["models"], "votes": report.get("votes")}]


def _provenance_table(report: dict) -> str:
    """Every model with its Hub id (or local path), revision and resolved commit; data and votes sources."""
    lines = ["| task | role | model | revision | commit |", "|---|---|---|---|---|"]
    for i, task in enumerate(_tasks(report)):
        for role, model in task["models"].items():
            if role == "models.target" and i > 0:  # one target for every task
                continue
            where = "Hub" if model.get("repo_id") else "local"
            name = _model_name(model) + (f" (subfolder `{model['subfolder']}`)" if model.get("subfolder") else "")
            commit = f"`{model['commit_hash']}`" if model.get("commit_hash") else "–"
            lines.append(f"| {task['name']} | {ROLE_NAMES.get(role, role)} | `{name}` ({where}) | "
                         f"{model.get('revision') or '–'} | {commit} |")
    extra = []
    for task in _tasks(report):
        votes = task.get("votes") or {}
        if votes.get("data_source"):
            extra.append(f"- task `{task['name']}` vote samples: `{votes['data_source']}`"
                         f" (fingerprint `{votes.get('data_fingerprint')}`)")
        if votes.get("file"):
            extra.append(f"- task `{task['name']}` votes file: `{votes['file']}`")
    return "\n".join(lines + ([""] + extra if extra else []))


def _kept_table(report: dict) -> str:
    per_tensor = report.get("per_tensor") or {}
    lines = ["| tensor | coordinates | kept fraction |", "|---|---|---|"]
    lines += [f"| `{name}` | {stats['numel']} | {stats['kept_fraction']:.4f} |" for name, stats in per_tensor.items()]
    return "\n".join(lines)


def _lora_section(report: dict) -> str:
    """How an adapter output was made and how to load it (empty for full weights)."""
    lora = report.get("lora")
    if not lora:
        return ""
    totals = lora["totals"]
    target = _model_name(report["models"]["models.target"])
    size = f"rank {lora['rank']}" if lora.get("rank") else ""
    if lora.get("energy") is not None:
        size = (size + ", " if size else "") + f"energy {lora['energy']}"
    tied = ""
    if lora.get("tied"):
        tied = (f"\nTied modules ({', '.join(f'`{a}` ↔ `{b}`' for a, b in lora['tied'].items())}) carry the same "
                "factors so that both uses of the shared weight see the delta; do not `merge_and_unload()` this "
                "adapter (peft would add the delta to the shared weight twice).\n")
    return f"""
## LoRA adapter

This folder is a PEFT LoRA adapter for `{target}`, not full weights: each masked delta was factored by truncated
SVD ({size}; {totals['lora_modules']} modules). Relative reconstruction error ‖D − B·A‖_F / ‖D‖_F:
{totals['relative_error']:.3g} overall, {totals['max_relative_error']:.3g} at worst (per module in
`gradfix_report.json`). Changed biases are stored whole, other changed modules as `modules_to_save`
({len(lora['modules_to_save'])}). Load it on the target with the config of this folder (the task's labels):

```python
from peft import PeftModel
from transformers import AutoConfig, {report['model_class']}

base = {report['model_class']}.from_pretrained("{target}", config=AutoConfig.from_pretrained(folder))
model = PeftModel.from_pretrained(base, folder)
```

The held-out scores below are those of the full transported model.
{tied}"""


def write_model_card(folder: Path, report: dict, recipe_yaml: str, pipeline_tag: Optional[str],
                     datasets: Optional[list[str]] = None) -> None:
    """README.md made with huggingface_hub's ``ModelCard``/``ModelCardData``: Hub metadata (``base_model`` = the
    target when it is a Hub id, ``base_model_relation: merge``, tags, datasets, library, pipeline tag) and the
    method, α, N, kept fractions, provenance (commits), evaluation table, recipe and the paper."""
    target = report["models"]["models.target"]
    source_ft = report["models"]["models.source_finetuned"]
    lora = report.get("lora")  # written as a LoRA adapter for θ_B (output.as_lora)
    data = ModelCardData(
        base_model=target["repo_id"] if _is_hub_id(target) else None,
        base_model_relation=("adapter" if lora else "merge") if _is_hub_id(target) else None,
        tags=list(TAGS) + (["lora", "peft"] if lora else []), library_name="peft" if lora else "transformers",
        pipeline_tag=pipeline_tag, datasets=datasets or None,
    )
    totals = report["totals"]
    method = dict(report["method"])
    tasks = _tasks(report)
    settings = ", ".join(f"{k}: `{v}`" for k, v in method.items() if k not in ("name", "alpha"))

    if report.get("rebase"):
        title = f"`{_model_name(source_ft)}` rebased onto `{_model_name(target)}`"
    elif len(tasks) == 1:
        title = f"GradFix transport of `{_model_name(source_ft)}` onto `{_model_name(target)}`"
    else:
        title = f"GradFix `{method['name']}` merge of {len(tasks)} task vectors onto `{_model_name(target)}`"
    task_lines = "\n".join(
        f"- task `{t['name']}`: fine-tune `{_model_name(t['models']['models.source_finetuned'])}` of "
        f"`{_model_name(t['models']['models.source'])}`, weight {t.get('weight', 1.0)}, vote samples "
        f"N = {t['votes']['n_samples'] if t.get('votes') else 0}" for t in tasks)
    content = f"""---
{data.to_yaml()}
---

# {title}

This model is the target pre-trained model θ_B plus task vectors τ = θ_A^ft − θ_A of fine-tunings of other
pre-trained models, masked coordinate by coordinate with GradFix
([Gradient-Sign Masking for Task Vector Transport Across Pre-Trained Models]({PAPER_URL}), ICLR 2026):
θ = θ_B + α·(m ⊙ τ_A), m = 1{{sign(τ_A) = sign(Σ_n sign(−∇ℓ_n(θ_B)))}} for one task vector; merges combine several
(method `{method['name']}`). {_fine_tuning_sentence(method)}

- method: `{method['name']}`, α = {method['alpha']}{", " + settings if settings else ""}
{task_lines}
- kept fraction: {totals['kept_fraction']:.4f} of all transported coordinates changed
- made with gradfix_hf {report['library_version']}
{_lora_section(report)}
{_rebase_section(report)}## Results

{_results_table(report.get('evaluation'))}

{_auto_section(report)}## Drift of the target and agreement of the vote

How far θ_B is from θ_A (relative L2 distance), the share of coordinates where τ_A's sign agrees with the
target's sign estimate (among those where both have one), and the kept fraction, per layer group{
" (one value per task vector)" if len(tasks) > 1 else ""}:

{drift_table(report.get('drift'))}

## Provenance

{_provenance_table(report)}

## Kept fraction per tensor

<details>
<summary>{len(report.get('per_tensor') or {})} tensors, {totals['transported_coordinates']} coordinates, kept \
{totals['kept_fraction']:.4f} overall</summary>

{_kept_table(report)}

</details>

## Recipe

```yaml
{recipe_yaml.rstrip()}
```

## Citation

GradFix: [Gradient-Sign Masking for Task Vector Transport Across Pre-Trained Models]({PAPER_URL}) (ICLR 2026).
"""
    ModelCard(content).save(folder / "README.md")


def _short_name(model: dict) -> str:
    return model.get("repo_id") or Path(model["path"]).name


def default_commit_message(report: dict) -> str:
    """One line naming the method, the models (Hub ids, or local folder names), α, N and the kept fraction."""
    method, tasks = report["method"], _tasks(report)
    target = _short_name(report["models"]["models.target"])
    n = ", ".join(str(t["votes"]["n_samples"]) for t in tasks if t.get("votes")) or "–"
    mask = f" (mask {method['mask']})" if method.get("mask") else ""
    if len(tasks) == 1:
        source_ft = _short_name(report["models"]["models.source_finetuned"])
        what = f"GradFix {method['name']}{mask}: {source_ft} onto {target}"
    else:
        what = f"GradFix {method['name']}{mask}: {len(tasks)} task vectors onto {target}"
    return f"{what}, α={method['alpha']:g}, N={n}, kept {report['totals']['kept_fraction']:.4f}"


def default_commit_description(report: dict) -> str:
    return (f"Made with gradfix_hf {report['library_version']} ({PAPER_URL}).\n\n"
            f"{_results_table(report.get('evaluation'))}\n\n{_provenance_table(report)}\n")


def _fine_tuning_sentence(method: dict) -> str:
    """Whether the merge was fine-tuned afterwards (``method.few_shot``), and how."""
    stage = method.get("few_shot")
    if not stage:
        return "No fine-tuning of θ_B was done."
    stage = FewShotStage.parse(stage)
    return (f"The merge was then fine-tuned on the vote samples: {stage.describe()} (AdamW, batches of "
            f"{stage.batch_size}; `method.few_shot`).")
