"""The mergekit extra: GradFix methods registered in mergekit write the same tensors as ``gradfix run``.

One tiny Llama world built from configs (no network): θ_A and θ_A' are base-model checkpoints
(``LlamaModel``: names without the ``model.`` prefix, no ``lm_head``), θ_B and the fine-tunes are
``LlamaForCausalLM``, so the mergekit side exercises name alignment and the new-head rule. Votes come from
gradfix_hf's own stage 1; both front ends then read the same votes files, and every comparison is exact
(``torch.equal``) unless a test says why not.
"""
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

pytest.importorskip("mergekit")

from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import MergeOptions, run_merge  # noqa: E402

import gradfix_hf  # noqa: E402
from gradfix_hf import RecipeError, VotesFile, VotesFileError, compute_recipe_votes, prepare  # noqa: E402
from gradfix_hf.integrations import mergekit as gm  # noqa: E402
from gradfix_hf.integrations.mergekit import inputs as gm_inputs  # noqa: E402
from gradfix_hf.quickstart.toy import (LABELS, NEGATIVE, NEUTRAL, POSITIVE, sentiment_rows,  # noqa: E402
                                       word_tokenizer, write_jsonl)

PROMPT = "review: {text} sentiment:"


def _weights(folder: Path) -> dict:
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two sources, a target, three fine-tunes (two of θ_A, one of θ_A') and two votes files."""
    root = tmp_path_factory.mktemp("mergekit-world")
    tokenizer = word_tokenizer(POSITIVE + NEGATIVE + NEUTRAL[:40] + ["review:", "sentiment:", "negative", "positive"],
                               style="gpt2")
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    paths = {}

    def save(model, name):
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])

    sources = {}
    for seed, name in ((0, "source"), (2, "source2")):
        torch.manual_seed(seed)
        sources[name] = transformers.LlamaModel(config)
        save(sources[name], name)
    torch.manual_seed(1)
    save(transformers.LlamaForCausalLM(config), "target")
    for seed, (name, source) in enumerate((("ft0", "source"), ("ft1", "source"), ("ft2", "source2")), start=10):
        torch.manual_seed(seed)  # a "fine-tune": θ_A plus a small perturbation, and its own LM head
        tuned = transformers.LlamaForCausalLM(config)
        state = sources[source].state_dict()
        with torch.no_grad():
            for key, param in tuned.model.named_parameters():
                param.copy_(state[key] + 0.02 * torch.randn_like(param))
        save(tuned, name)
    paths["train"] = root / "train.jsonl"
    write_jsonl(paths["train"], sentiment_rows(40, seed=3))
    for i in range(2):
        recipe = gradfix_hf.Recipe.from_dict({
            "objective": "causal-lm", "method": {"mask": "gradfix"},
            "models": {"source": str(paths["source"]), "source_finetuned": str(paths[f"ft{i}"]),
                       "target": str(paths["target"])},
            "data": {"path": str(paths["train"]), "samples_per_class": 3, "seed": i, "prompt": PROMPT,
                     "label_words": dict(LABELS)}})
        paths[f"votes{i}"] = root / f"votes{i}.safetensors"
        compute_recipe_votes(prepare(recipe), progress=False).save(paths[f"votes{i}"])
    paths["root"] = root
    return {k: str(v) for k, v in paths.items()}


def mergekit_merge(config: dict, out: Path) -> dict:
    gm.register_methods()
    gm.check_config(config)
    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return _weights(out)


def engine_merge(world: dict, method: dict, tasks: list, out: Path) -> dict:
    recipe = {"objective": "causal-lm", "models": {"target": world["target"], "source": world["source"]},
              "method": method, "tasks": tasks}
    gradfix_hf.transport(recipe, out, progress=False)
    return _weights(out)


# mergekit merge_method, top-level parameters, [(fine-tune, its θ_A, votes, weight)]
CASES = {
    "gradfix": ("gradfix", {"alpha": 0.5, "mask": "gradfix"}, [("ft0", "source", "votes0", None)]),
    "gradfix-random": ("gradfix", {"alpha": 1.0, "mask": "random", "seed": 3, "no_evidence": "keep"},
                       [("ft0", "source", "votes0", None)]),
    "task_arithmetic": ("gradfix_task_arithmetic", {"alpha": 0.5, "normalize": True},
                        [("ft0", "source", None, 1.0), ("ft1", "source", None, 0.5)]),
    "ties": ("gradfix_ties", {"alpha": 1.0, "density": 0.5},
             [("ft0", "source", None, 1.0), ("ft2", "source2", None, 0.7)]),
    "mask_then_merge": ("gradfix_mask_then_merge", {"alpha": 0.8, "mask": "gradfix", "merge": "ties", "density": 0.3},
                        [("ft0", "source", "votes0", 1.0), ("ft1", "source", "votes1", 0.6)]),
    "merge_then_mask": ("gradfix_merge_then_mask", {"alpha": 0.5, "mask": "soft", "rho": 2.0},
                        [("ft0", "source", "votes0", 0.7), ("ft1", "source", "votes1", 0.3)]),
    "multi_source": ("gradfix_multi_source", {"alpha": 1.0, "mask": "gradfix", "merge": "ties", "variant": "paper"},
                     [("ft0", "source", "votes0", 1.0), ("ft2", "source2", "votes0", 1.0)]),
}


def _configs(world: dict, case: str):
    name, shared, tasks = CASES[case]
    models, recipe_tasks = [], []
    for ft, source, votes, weight in tasks:
        per_model = {"source": world[source]}
        task = {"source_finetuned": world[ft], "source": world[source]}
        if votes:
            per_model["votes"] = task["votes"] = world[votes]
        if weight is not None:
            per_model["weight"] = task["weight"] = weight
        models.append({"model": world[ft], "parameters": per_model})
        recipe_tasks.append(task)
    config = {"merge_method": name, "base_model": world["target"], "models": models, "parameters": dict(shared),
              "dtype": "float32"}
    method = {"name": "gradfix" if name == "gradfix" else name.removeprefix("gradfix_"), **shared}
    return config, method, recipe_tasks


@pytest.mark.parametrize("case", list(CASES))
def test_same_tensors_as_gradfix_run(world, tmp_path, case):
    config, method, tasks = _configs(world, case)
    if case == "mask_then_merge":  # one θ_A for every fine-tune: `source` once, as a top-level parameter
        config["parameters"]["source"] = world["source"]
        for model in config["models"]:
            del model["parameters"]["source"]
    ours = mergekit_merge(config, tmp_path / "mergekit")
    reference = engine_merge(world, method, tasks, tmp_path / "engine")
    assert sorted(ours) == sorted(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), f"{case}: {name} differs by {(ours[name] - tensor).abs().max()}"
    # the new-head rule: no θ_A has lm_head, so both copy the first fine-tune's
    assert torch.equal(ours["lm_head.weight"], _weights(Path(tasks[0]["source_finetuned"]))["lm_head.weight"])


def test_command_line_entry_point(world, tmp_path):
    """``gradfix-mergekit-yaml`` (mergekit-yaml's CLI and flags) in a fresh, offline process; sharded output."""
    config, method, tasks = _configs(world, "mask_then_merge")
    path = tmp_path / "merge.yml"
    path.write_text(yaml.safe_dump(config))
    script = Path(sys.executable).with_name("gradfix-mergekit-yaml")
    # the console script once the package is (re)installed with the extra; the same main() otherwise
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gradfix_hf.integrations.mergekit"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    flags = ["--no-copy-tokenizer", "--out-shard-size", "50K"]
    done = subprocess.run(command + [str(path), str(tmp_path / "out"), *flags], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = engine_merge(world, method, tasks, tmp_path / "engine")
    ours = _weights(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    assert sorted(ours) == sorted(reference)
    assert all(torch.equal(ours[k], v) for k, v in reference.items())
    assert "merge_method: gradfix_mask_then_merge" in (tmp_path / "out" / "mergekit_config.yml").read_text()
    assert (tmp_path / "out" / "README.md").is_file()  # the model card: absolute paths, so no Hub lookup offline
    entry = [line for line in Path(gradfix_hf.__file__).parents[1].joinpath("setup.cfg").read_text().splitlines()
             if "gradfix-mergekit-yaml" in line]
    assert entry and entry[0].split("=", 1)[1].strip() == "gradfix_hf.integrations.mergekit:main"


def test_builtin_task_arithmetic_equals_ours_when_source_is_target(world, tmp_path):
    """mergekit's τ = fine-tune − base equals ours when θ_A is θ_B; then both are task arithmetic."""
    config = {"merge_method": "task_arithmetic", "base_model": world["target"], "dtype": "float32",
              "parameters": {"lambda": 0.5},
              "models": [{"model": world["ft0"], "parameters": {"weight": 1.0}},
                         {"model": world["ft1"], "parameters": {"weight": 0.5}}]}
    run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "mergekit"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    recipe = {"objective": "causal-lm", "models": {"target": world["target"], "source": world["target"]},
              "method": {"name": "task_arithmetic", "alpha": 0.5},
              "tasks": [{"source_finetuned": world["ft0"], "weight": 1.0},
                        {"source_finetuned": world["ft1"], "weight": 0.5}]}
    gradfix_hf.transport(recipe, tmp_path / "engine", progress=False)
    ours, theirs = _weights(tmp_path / "engine"), _weights(tmp_path / "mergekit")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        # weights 1 and 0.5 and λ = 0.5 are exact in binary, so the two operation orders round alike
        assert torch.equal(theirs[name], tensor), name


def test_register_is_idempotent_and_lazy(tmp_path):
    import mergekit.merge_methods as mm

    first = gm.register_methods()
    assert gm.register_methods() == first
    assert first == ["gradfix", "gradfix_task_arithmetic", "gradfix_ties", "gradfix_mask_then_merge",
                     "gradfix_merge_then_mask", "gradfix_multi_source"]
    names = [m.spec.name for m in mm.registered_methods()]
    assert all(names.count(n) == 1 for n in first) and "task_arithmetic" in names and "ties" in names
    probe = ("import sys, gradfix_hf, gradfix_hf.integrations.mergekit; "
             "assert 'mergekit' not in sys.modules, 'mergekit imported'")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_missing_mergekit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mergekit", None)
    monkeypatch.setitem(sys.modules, "mergekit.merge_methods", None)
    with pytest.raises(ImportError, match=r'pip install "gradfix_hf\[mergekit\]"'):
        gm.register_methods()


def test_bad_configs_fail_before_any_tensor(world, tmp_path, capsys):
    config, _, _ = _configs(world, "mask_then_merge")
    bad = json.loads(json.dumps(config))
    bad["parameters"]["desnity"] = 0.3
    with pytest.raises(RecipeError, match=r"unknown parameter 'desnity'.*Did you mean 'density'"):
        gm.check_config(bad)
    bad = json.loads(json.dumps(config))
    bad["models"][0]["parameters"]["density"] = 0.3
    with pytest.raises(RecipeError, match=r"models\[0\].*global parameter.*top-level"):
        gm.check_config(bad)
    bad = json.loads(json.dumps(config))
    bad["parameters"]["variant"] = "original"
    with pytest.raises(RecipeError, match="one tensor at a time"):
        gm.check_config(bad)
    bad["parameters"].update(variant="paper", mask="oracle")
    with pytest.raises(RecipeError, match="'oracle'"):
        gm.check_config(bad)
    bad["parameters"]["mask"] = "mean"
    with pytest.raises(VotesFileError, match="votes0.safetensors: votes were aggregated with 'majority'"):
        gm.check_config(bad)
    bad = json.loads(json.dumps(config))
    del bad["models"][1]["parameters"]["votes"]
    with pytest.raises(RecipeError, match=r"models\[1\].*no `votes`"):
        gm.check_config(bad)
    missing = str(tmp_path / "nowhere.safetensors")
    bad["models"][1]["parameters"]["votes"] = missing
    with pytest.raises(VotesFileError, match="nowhere.safetensors: votes file not found"):
        gm.check_config(bad)
    # the command checks the config before mergekit starts, and says why in one line
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    assert gm.main([str(path), str(tmp_path / "out")]) == 2
    assert "nowhere.safetensors: votes file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_votes_inside_mergekit_name_file_and_tensor(world, tmp_path):
    """run_merge without check_config: the kernel itself refuses missing or foreign votes."""
    config, _, _ = _configs(world, "gradfix")
    config["models"][0]["parameters"]["votes"] = str(tmp_path / "missing.safetensors")
    gm.register_methods()
    with pytest.raises(VotesFileError, match="missing.safetensors: votes file not found"):
        run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "a"),
                  MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    votes = VotesFile.load(world["votes0"])
    other = tmp_path / "other-model.safetensors"  # a wider model: same names, other shapes
    VotesFile({k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1, dtype=v.dtype) for k, v in votes.votes.items()},
              votes.metadata).save(other)
    config["models"][0]["parameters"]["votes"] = str(other)
    with pytest.raises(VotesFileError, match=r"other-model.safetensors: tensor 'model\..*' has votes of shape"):
        run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "b"),
                  MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    renamed = tmp_path / "gpt2-names.safetensors"  # another architecture's names
    VotesFile({"transformer." + k: v for k, v in votes.votes.items()}, votes.metadata).save(renamed)
    config["models"][0]["parameters"]["votes"] = str(renamed)
    with pytest.raises(VotesFileError, match=r"gpt2-names.safetensors: no vote for tensor 'model\."):
        run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "c"),
                  MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))


def test_name_alignment_prefix_and_tied_weights(world):
    """θ_A as a base-model checkpoint lines up with task-model names; tied names are used only when tied."""
    source = gm_inputs.open_source(world["source"])
    assert source.prefix == "model" and not source.tied
    assert source.key("model.layers.0.mlp.up_proj.weight", gm_inputs.WeightNames()) == \
        "layers.0.mlp.up_proj.weight"
    tied = gm_inputs.WeightNames(tied=("model.embed_tokens.weight",))
    assert source.key("lm_head.weight", tied) is None  # untied θ_A: its embedding is not an lm_head
    votes = VotesFile.load(world["votes0"])
    assert gm_inputs.vote_key(votes, "layers.0.mlp.up_proj.weight", "model", gm_inputs.WeightNames()) == \
        "model.layers.0.mlp.up_proj.weight"
    tied_base = gm_inputs.WeightNames(tied=tied.tied, base_tied=True)
    assert gm_inputs.vote_key(votes, "lm_head.weight", "model", tied_base) == "model.embed_tokens.weight"


def test_votes_that_leave_unmoved_tensors_out(world, tmp_path):
    """A fine-tune that froze its embedding: the vote leaves it out (``not_voted``); the mergekit method merges
    from that file the same tensors as ``gradfix run`` (θ_B's embedding), and refuses the file for a fine-tune
    whose τ_A moves that tensor."""
    tuned = load_file(Path(world["ft0"]) / "model.safetensors")
    tuned["model.embed_tokens.weight"] = load_file(Path(world["source"]) / "model.safetensors")["embed_tokens.weight"]
    frozen = tmp_path / "frozen"
    shutil.copytree(world["ft0"], frozen)
    save_file(tuned, frozen / "model.safetensors", metadata={"format": "pt"})
    recipe = gradfix_hf.Recipe.from_dict({
        "objective": "causal-lm", "method": {"mask": "gradfix"},
        "models": {"source": world["source"], "source_finetuned": str(frozen), "target": world["target"]},
        "data": {"path": world["train"], "samples_per_class": 3, "seed": 0, "prompt": PROMPT,
                 "label_words": dict(LABELS)}})
    votes = compute_recipe_votes(prepare(recipe), progress=False)
    assert votes.not_voted == ["model.embed_tokens.weight"] and "model.embed_tokens.weight" not in votes.votes
    path = votes.save(tmp_path / "votes.safetensors")
    config = {"merge_method": "gradfix", "base_model": world["target"], "dtype": "float32",
              "parameters": {"alpha": 0.5, "mask": "gradfix"},
              "models": [{"model": str(frozen), "parameters": {"source": world["source"], "votes": str(path)}}]}
    ours = mergekit_merge(config, tmp_path / "mergekit")
    reference = engine_merge(world, {"name": "gradfix", "alpha": 0.5, "mask": "gradfix"},
                             [{"source_finetuned": str(frozen), "source": world["source"], "votes": str(path)}],
                             tmp_path / "engine")
    assert all(torch.equal(ours[name], tensor) for name, tensor in reference.items())
    target = load_file(Path(world["target"]) / "model.safetensors")
    assert torch.equal(ours["model.embed_tokens.weight"], target["model.embed_tokens.weight"])
    config["models"][0]["model"] = world["ft0"]  # its τ_A moves the embedding the file left out
    with pytest.raises(VotesFileError, match="embed_tokens.weight.*left out of the vote as unmoved"):
        mergekit_merge(config, tmp_path / "mergekit-bad")
