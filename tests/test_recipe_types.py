"""Every value of a recipe is type-checked when the recipe is read, with a RecipeError naming the key and why.

A quoted "false" must not turn trust_remote_code on, a string must not pass for an int, ±inf and NaN must not pass
for a number, and a prompt placeholder that formatting would trip on must not wait for the run. Reading a recipe
loads nothing, so these recipes name models and data that do not exist.
"""
import copy
import importlib
import math
from pathlib import Path

import pytest
import yaml

from gradfix_hf import Recipe
from gradfix_hf.cli import main
from gradfix_hf.errors import RecipeError
from gradfix_hf.methods import get
from gradfix_hf.recipe import DataConfig

SINGLE = {"models": {"target": "t", "source": "s", "source_finetuned": "f"}, "data": {"path": "d.jsonl"}}
#: a merge of two task vectors (task arithmetic needs no votes)
TASKS = {"models": {"target": "t", "source": "s"}, "method": {"name": "task_arithmetic"},
         "tasks": [{"source_finetuned": "a"}, {"source_finetuned": "b"}]}
BASES = {"single": SINGLE, "tasks": TASKS}
INF, NAN = math.inf, math.nan


def changed(base: str, key: tuple, value) -> dict:
    """A copy of a minimal valid recipe with the value at ``key`` (keys and list indices) set to ``value``."""
    raw = copy.deepcopy(BASES[base])
    node = raw
    for part in key[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
    node[key[-1]] = value
    return raw


BOOL = "must be true or false (a YAML boolean)"
INT = "must be an integer"
STRING = "must be a string"
FINITE = "must be a finite number"

BAD = [
    # 1. booleans are YAML booleans: the strings "false", "no", "true" are refused, nothing but True enables
    ("single", ("trust_remote_code",), "false", ["trust_remote_code: " + BOOL, "got the string 'false'"]),
    ("single", ("trust_remote_code",), "no", ["trust_remote_code: " + BOOL, "got the string 'no'"]),
    ("single", ("trust_remote_code",), "true", ["trust_remote_code: " + BOOL, "got the string 'true'"]),
    ("single", ("trust_remote_code",), 1, ["trust_remote_code: " + BOOL, "got 1"]),
    ("single", ("allow_pickle",), "false", ["allow_pickle: " + BOOL, "got the string 'false'"]),
    ("single", ("allow_pickle",), "off", ["allow_pickle: " + BOOL, "got the string 'off'"]),
    ("single", ("allow_pickle",), None, ["allow_pickle: " + BOOL, "got None"]),
    ("single", ("method", "force"), "yes", ["method.force: " + BOOL, "got the string 'yes'"]),
    ("tasks", ("method", "normalize"), "false", ["method.normalize: " + BOOL, "got the string 'false'"]),
    # 2. integers are ints: not bools, floats or strings
    ("single", ("data", "samples_per_class"), "8", ["data.samples_per_class: " + INT, "got the string '8'"]),
    ("single", ("data", "samples_per_class"), True, ["data.samples_per_class: " + INT, "got True"]),
    ("single", ("data", "seed"), 1.0, ["data.seed: " + INT, "got 1.0"]),
    ("single", ("data", "selection_pool"), "1000", ["data.selection_pool: " + INT, "or null"]),
    ("single", ("data", "max_length"), 128.5, ["data.max_length: " + INT, "got 128.5"]),
    ("single", ("evaluation", "max_samples"), "10", ["evaluation.max_samples: " + INT, "got the string '10'"]),
    ("single", ("evaluation", "few_shot_steps"), 2.5, ["evaluation.few_shot_steps: " + INT, "got 2.5"]),
    ("single", ("evaluation", "few_shot_batch_size"), "4", ["evaluation.few_shot_batch_size: " + INT]),
    ("single", ("vote_batch_size",), "16", ["vote_batch_size: " + INT, "got the string '16'"]),
    ("single", ("output", "as_lora"), {"rank": "8"}, ["output.as_lora.rank: " + INT]),
    ("single", ("method", "seed"), "1", ["method.seed: must be a int", "'1'"]),
    ("single", ("method", "seed"), True, ["method.seed: must be a int", "True"]),
    # 3. strings where a string is meant (null only where the key is optional)
    ("single", ("models", "target"), {"path": 123}, ["models.target.path: " + STRING, "got 123"]),
    ("single", ("models", "target"), {"path": "t", "revision": 1.0}, ["models.target.revision: " + STRING,
                                                                       "got 1.0"]),
    ("single", ("models", "source"), {"path": "s", "subfolder": 5}, ["models.source.subfolder: " + STRING]),
    ("single", ("models", "target"), None, ["models.target: must be a local folder or a Hub id", "got None"]),
    ("single", ("data", "path"), 5, ["data.path: " + STRING, "got 5"]),
    ("single", ("data", "split"), ["train"], ["data.split: " + STRING, "got ['train']"]),
    ("single", ("data", "name"), 2019, ["data.name: " + STRING, "got 2019"]),
    ("single", ("data", "text_column"), 0, ["data.text_column: " + STRING]),
    ("single", ("data", "text_pair_column"), 1, ["data.text_pair_column: " + STRING]),
    ("single", ("data", "label_column"), None, ["data.label_column: " + STRING, "got None"]),
    ("single", ("objective",), 3, ["objective: " + STRING, "got 3"]),
    ("single", ("vote_engine",), True, ["vote_engine: " + STRING, "got True"]),
    ("single", ("model_class",), 5, ["model_class: " + STRING, "got 5"]),
    ("single", ("votes",), 5, ["votes: " + STRING, "got 5"]),
    ("single", ("votes_cache",), ["cache"], ["votes_cache: " + STRING]),
    ("single", ("output", "path"), 1, ["output.path: " + STRING, "got 1"]),
    ("single", ("output", "dtype"), 16, ["output.dtype: " + STRING, "got 16"]),
    ("single", ("output",), None, ["output: must be a mapping", "got None"]),
    ("single", ("evaluation", "split"), None, ["evaluation.split: " + STRING, "got None"]),
    ("single", ("evaluation", "test_path"), 7, ["evaluation.test_path: " + STRING]),
    ("single", ("method", "name"), 5, ["method.name: " + STRING]),
    ("single", ("method", "mask"), 1, ["method.mask: must be a str", "got 1"]),
    ("tasks", ("tasks", 1, "name"), 5, ["tasks[1].name: " + STRING, "got 5"]),
    ("tasks", ("tasks", 0, "votes"), 1, ["tasks[0].votes: " + STRING]),
    ("tasks", ("tasks", 1, "source_finetuned"), {"path": 3}, ["tasks[1].source_finetuned.path: " + STRING]),
    ("tasks", ("tasks", 1, "data"), {"path": "d", "seed": "1"}, ["tasks[1].data.seed: " + INT]),
    # 4. numbers are finite
    ("tasks", ("tasks", 1, "weight"), INF, ["tasks[1].weight: " + FINITE, "got inf"]),
    ("tasks", ("tasks", 1, "weight"), -INF, ["tasks[1].weight: " + FINITE, "got -inf"]),
    ("tasks", ("tasks", 0, "weight"), NAN, ["tasks[0].weight: " + FINITE, "got nan"]),
    ("tasks", ("tasks", 1, "weight"), "1", ["tasks[1].weight: " + FINITE, "got the string '1'"]),
    ("tasks", ("tasks", 1, "weight"), True, ["tasks[1].weight: " + FINITE, "got True"]),
    ("single", ("method", "alpha"), INF, ["method.alpha: " + FINITE, "got inf"]),
    ("single", ("evaluation", "few_shot_lr"), INF, ["evaluation.few_shot_lr: " + FINITE, "got inf"]),
    ("single", ("evaluation", "few_shot_lr"), NAN, ["evaluation.few_shot_lr: " + FINITE]),
    ("single", ("evaluation", "few_shot_lr"), "fast", ["evaluation.few_shot_lr: " + FINITE, "the string 'fast'"]),
    ("single", ("evaluation", "alphas"), [0.5, INF], ["evaluation.alphas: a non-empty list of positive numbers"]),
    ("single", ("evaluation", "alphas"), [0.5, "1"], ["evaluation.alphas: a non-empty list of positive numbers"]),
    ("single", ("output", "as_lora"), {"energy": NAN}, ["output.as_lora.energy: " + FINITE, "got nan"]),
    ("single", ("output", "as_lora"), {"energy": INF}, ["output.as_lora.energy: " + FINITE, "got inf"]),
    ("single", ("method",), {"mask": "soft", "rho": INF}, ["method.rho: must be a finite float", "got inf"]),
    ("single", ("method", "min_margin"), NAN, ["method.min_margin: must be a finite float", "got nan"]),
    ("single", ("method",), {"no_evidence": "scale", "no_evidence_scale": -INF},
     ["method.no_evidence_scale: must be a finite float"]),
    ("single", ("method",), {"name": "ties", "density": NAN}, ["method.density: must be a finite float"]),
    # 5. evaluation.max_samples: an int >= 1 or null
    ("single", ("evaluation", "max_samples"), 0, ["evaluation.max_samples: must be an integer >= 1", "got 0"]),
    ("single", ("evaluation", "max_samples"), -5, ["evaluation.max_samples: must be an integer >= 1", "got -5"]),
    # 6. data.prompt: {text}, {text_pair} with a pair column, literal {{ }}, nothing else
    ("single", ("data", "prompt"), "Title: {title} {text}", ["data.prompt: unknown placeholder '{title}'"]),
    ("single", ("data", "prompt"), "{} {text}", ["data.prompt: unknown placeholder '{}'"]),
    ("single", ("data", "prompt"), "{0} {text}", ["data.prompt: unknown placeholder '{0}'"]),
    ("single", ("data", "prompt"), "{text.upper}", ["data.prompt: unknown placeholder '{text.upper}'"]),
    ("single", ("data", "prompt"), "{text[0]} {text}", ["data.prompt: unknown placeholder '{text[0]}'"]),
    ("single", ("data", "prompt"), "{text} [SEP] {text_pair}", ["data.prompt: the placeholder '{text_pair}'",
                                                                 "needs data.text_pair_column"]),
    ("single", ("data", "prompt"), "review: {text", ["data.prompt: unbalanced braces", "'review: {text'"]),
    ("single", ("data", "prompt"), "{text} }", ["data.prompt: unbalanced braces", "Single '}'"]),
    ("single", ("data", "prompt"), "{text:d}", ["data.prompt: the placeholder '{text:d}' cannot be formatted"]),
    ("single", ("data", "prompt"), "{text!x}", ["data.prompt: the placeholder '{text!x}' cannot be formatted"]),
    ("single", ("data", "prompt"), "{{text}}", ["data.prompt: must contain '{text}'"]),
    ("single", ("data", "prompt"), 5, ["data.prompt: " + STRING, "got 5"]),
    # 7. the lists and mappings keep their checks, element by element
    ("single", ("data", "label_words"), ["negative"], ["data.label_words: must map each label"]),
    ("single", ("data", "templates"), ["a photo of a {}.", 3], ["data.templates: 3 is not a string"]),
    ("single", ("evaluation", "metrics"), ["accuracy", 1], ["evaluation.metrics: a non-empty list of metric names"]),
    ("tasks", ("tasks",), "a", ["tasks: expected a list of task vectors"]),
    ("tasks", ("tasks", 1), 5, ["tasks[1]: expected a mapping"]),
    ("single", ("method",), {"name": "auto", "candidates": ["gradfix", 3]},
     ["method.candidates[1]: a mask name or a mapping"]),
]


@pytest.mark.parametrize("base,key,value,fragments", BAD,
                         ids=[f"{'.'.join(map(str, key))}={value!r}" for _, key, value, _ in BAD])
def test_a_value_of_the_wrong_type_names_its_key_and_why(base, key, value, fragments):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(changed(base, key, value))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_minimal_recipes_are_valid():
    for raw in BASES.values():
        Recipe.from_dict(copy.deepcopy(raw))


def test_ints_are_accepted_where_floats_are_meant():
    recipe = Recipe.from_dict({**changed("tasks", ("tasks", 1, "weight"), 2),
                               "method": {"name": "ties", "alpha": 1, "density": 1}})
    assert recipe.tasks[1].weight == 2 and recipe.method.alpha == 1 and recipe.method.parameters["density"] == 1.0
    raw = changed("single", ("evaluation",), {"few_shot_lr": 1, "alphas": [1, 0.5]})
    raw["output"] = {"as_lora": {"energy": 1}}
    raw["method"] = {"mask": "soft", "rho": 2}
    recipe = Recipe.from_dict(raw)
    assert recipe.evaluation.few_shot_lr == 1 and recipe.evaluation.alphas == [0.5, 1.0]
    assert recipe.output.as_lora.energy == 1 and recipe.method.parameters["rho"] == 2.0


def test_null_is_accepted_for_optional_keys():
    raw = changed("single", ("data",), {"path": "d.jsonl", "name": None, "revision": None, "selection_pool": None,
                                        "text_pair_column": None, "label_words": None, "templates": None})
    raw.update(votes=None, votes_cache=None, model_class=None, evaluation={"max_samples": None, "path": None,
                                                                           "few_shot_batch_size": None})
    raw["models"]["target"] = {"path": "t", "revision": None, "subfolder": None}
    raw["models"]["target_finetuned"] = None
    raw["output"] = {"path": None, "dtype": None, "as_lora": None}
    recipe = Recipe.from_dict(raw)
    assert recipe.data.selection_pool is None and recipe.evaluation.max_samples is None
    assert recipe.models.target.revision is None and recipe.output.dtype is None


@pytest.mark.parametrize("prompt,pair,formatted", [
    ("{{literal}} {text}", None, "{literal} a"),
    ("{text} }} {{", None, "a } {"),
    ("premise: {text} hypothesis: {text_pair}", "hypothesis", "premise: a hypothesis: b"),
    ("{text!s}: {text_pair:>2}", "other", "a:  b"),
])
def test_prompts_that_format_are_accepted(prompt, pair, formatted):
    data = Recipe.from_dict(changed("single", ("data",), {"path": "d", "prompt": prompt,
                                                          "text_pair_column": pair})).data
    fields = {"text": "a", **({"text_pair": "b"} if pair else {})}
    assert data.prompt.format(**fields) == formatted  # what Objective.text_of does


def test_yaml_booleans_enable_the_flags(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(SINGLE) + "trust_remote_code: true\nallow_pickle: true\n"
                    "evaluation: {few_shot_lr: 1e-5}\n")  # YAML 1.1 reads 1e-5 as a string: still converted
    recipe = Recipe.from_yaml(path)
    assert recipe.trust_remote_code is True and recipe.allow_pickle is True
    assert recipe.evaluation.few_shot_lr == 1e-5
    assert Recipe.from_dict(SINGLE).trust_remote_code is False and Recipe.from_dict(SINGLE).allow_pickle is False


def test_path_objects_are_kept_as_strings():
    raw = changed("single", ("data", "path"), Path("d.jsonl"))
    raw.update(votes=Path("v.safetensors"), output={"path": Path("out")})
    raw["models"]["target"] = {"path": Path("t")}
    recipe = Recipe.from_dict(raw)
    assert recipe.data.path == "d.jsonl" and recipe.votes == "v.safetensors" and recipe.output.path == "out"
    assert recipe.models.target.path == "t"


def test_the_python_api_checks_types_too():
    with pytest.raises(RecipeError, match=r"^data\.seed: must be an integer, got the string '0'\.$"):
        DataConfig(path="d", seed="0")
    recipe = Recipe.from_dict(SINGLE)
    with pytest.raises(RecipeError, match=r"^trust_remote_code: must be true or false \(a YAML boolean\), got the "
                                          r"string 'false'\.$"):
        recipe.replace(trust_remote_code="false")
    with pytest.raises(RecipeError, match=r"method\.rho: must be a finite float, got inf"):
        get("gradfix").validate({"mask": "soft", "rho": INF})
    with pytest.raises(RecipeError, match=r"method\.normalize: must be true or false"):
        get("task_arithmetic").validate({"normalize": "true"})


def test_a_quoted_false_fails_on_the_command_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the recipe was run")

    # gradfix_hf.transport is also the name of the function the package exports: take the module
    monkeypatch.setattr(importlib.import_module("gradfix_hf.transport"), "run_recipe", must_not_run)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(SINGLE) + 'trust_remote_code: "false"\n')
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradfix: error:"), err
    assert str(path) in err and "trust_remote_code: must be true or false (a YAML boolean), got the string 'false'" \
        in err
