"""Votes only where the task vector moves: tensors whose τ_A is zero everywhere get no vote and no gradient work.

A LoRA fine-tune leaves every module it did not target at θ_A's values; a full fine-tune with a frozen embedding
leaves that embedding. Their output is θ_B's tensor whatever the mask, so the vote skips them, the votes file lists
them as ``not_voted`` (not ties), and the merge gives bitwise what a vote over every tensor gives. Bad input: a file
that calls a tensor unmoved which this run's τ_A moves, corrupt ``not_voted`` metadata.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradfix_hf import Recipe, VotesFile, VotesFileError, compute_recipe_votes, prepare, transport
from gradfix_hf.plan import load_base_model
from gradfix_hf.votes import compute_votes_batched

from conftest import recipe_dict


@pytest.fixture(scope="module")
def chat(quickstart_root):
    return quickstart_root[0] / "gradfix-quickstart" / "chat"


def lora_recipe(chat) -> dict:
    return {"objective": "sft",
            "models": {"source": str(chat / "source"), "source_finetuned": str(chat / "source-lora"),
                       "target": str(chat / "target")},
            "data": {"path": str(chat / "data" / "train.jsonl"), "rows": 6},
            "method": {"mask": "gradfix", "alpha": 1.0}, "vote_batch_size": 3}


@pytest.fixture(scope="module")
def frozen_embedding_trio(trios, tmp_path_factory):
    """The BERT trio with θ_A^ft's word embeddings put back to θ_A's (a fine-tune that froze them)."""
    trio = dict(trios("bert"))
    folder = tmp_path_factory.mktemp("frozen") / "source_finetuned"
    shutil.copytree(trio["source_finetuned"], folder)
    tuned, base = load_file(folder / "model.safetensors"), load_file(trio["source"] / "model.safetensors")
    key = next(k for k in tuned if k.endswith("word_embeddings.weight"))
    base_key = next(k for k in base if k.endswith("word_embeddings.weight"))
    assert not torch.equal(tuned[key], base[base_key])
    tuned[key] = base[base_key].clone()
    save_file(tuned, folder / "model.safetensors", metadata={"format": "pt"})
    trio["source_finetuned"] = folder
    return trio


def test_a_lora_votes_only_the_modules_it_adapted(chat, tmp_path):
    """The unmoved tensors are exactly those the adapter does not change; the votes on the others are bitwise those
    of a vote over every transported tensor, and the votes file records the rest as not voted."""
    config = json.loads((chat / "source-lora" / "adapter_config.json").read_text())
    targets = set(config["target_modules"]) | set(config.get("modules_to_save") or ())
    prepared = prepare(Recipe.from_dict(lora_recipe(chat)))
    plan = prepared.plan
    adapted = {n for n in plan.transported if n.split(".")[-2] in targets}
    assert plan.unmoved and set(plan.unmoved) == set(plan.transported) - adapted
    assert set(prepared.voted_shapes) == adapted and set(prepared.not_voted) == set(plan.unmoved)

    votes = compute_recipe_votes(prepared, progress=False)
    assert set(votes.votes) == adapted and votes.not_voted == prepared.not_voted
    every, _ = compute_votes_batched(load_base_model(plan), prepared.objective, prepared.examples, plan.transported,
                                     micro_batch_size=3, progress=False)
    assert all(torch.equal(votes.votes[name], every[name]) for name in adapted)
    assert any(bool(every[name].any()) for name in plan.unmoved)  # those would have cost real gradient work
    loaded = VotesFile.load(votes.save(tmp_path / "votes.safetensors"))
    assert loaded.not_voted == prepared.not_voted and set(loaded.votes) == adapted


def test_frozen_embedding_merges_as_a_full_vote_would(frozen_embedding_trio, tmp_path):
    """A full fine-tune whose embedding stayed frozen: that tensor is not voted; the merged model equals, bitwise,
    the merge from a votes file that voted on every tensor (an older file), and its report says what was skipped."""
    trio = frozen_embedding_trio
    recipe = Recipe.from_dict(recipe_dict("bert", trio, method={"mask": "gradfix", "alpha": 1.0}))
    prepared = prepare(recipe)
    frozen = [n for n in prepared.plan.transported if n.endswith("word_embeddings.weight")]
    assert prepared.plan.unmoved == frozen and frozen[0] not in prepared.voted_shapes

    compact = compute_recipe_votes(prepared, progress=False)
    every, evidence = compute_votes_batched(load_base_model(prepared.plan), prepared.objective, prepared.examples,
                                            prepared.plan.transported, progress=False)
    assert all(torch.equal(compact.votes[n], every[n]) for n in compact.votes)
    full = VotesFile(votes=every, evidence=evidence,
                     metadata={k: v for k, v in compact.metadata.items() if k != "not_voted"})
    outputs = {}
    for name, votes in (("compact", compact), ("full", full)):
        path = votes.save(tmp_path / f"{name}.safetensors")
        result = transport(recipe, tmp_path / name, votes=path, progress=False)
        outputs[name] = load_file(tmp_path / name / "model.safetensors")
        report = json.loads((tmp_path / name / "gradfix_report.json").read_text())
        assert report["votes"]["not_voted_tensors"] == (1 if name == "compact" else 0)
        del result
    assert outputs["compact"].keys() == outputs["full"].keys()
    assert all(torch.equal(outputs["compact"][k], outputs["full"][k]) for k in outputs["full"])
    target = load_file(trio["target"] / "model.safetensors")
    key = next(k for k in outputs["compact"] if k.endswith("word_embeddings.weight"))
    assert torch.equal(outputs["compact"][key], target[next(t for t in target if t.endswith(key.split(".", 1)[-1]))])


def test_votes_that_call_a_moved_tensor_unmoved_are_refused(frozen_embedding_trio, trios, tmp_path):
    """Votes from the frozen-embedding fine-tune, used with the original fine-tune (whose τ_A moves the
    embedding): refused when the run has read the checkpoints (the vote lacks a moved tensor), and by the merge
    itself, naming the tensor and writing nothing, when it runs from the votes file alone."""
    from gradfix_hf.transport import load_votes_for

    prepared = prepare(Recipe.from_dict(recipe_dict("bert", frozen_embedding_trio)))
    path = compute_recipe_votes(prepared, progress=False).save(tmp_path / "votes.safetensors")
    moved = Recipe.from_dict(recipe_dict("bert", trios("bert")))
    with pytest.raises(VotesFileError, match="missing votes for.*word_embeddings"):
        load_votes_for(prepare(moved), path)
    with pytest.raises(VotesFileError, match="word_embeddings.weight.*left out of the vote as unmoved.*changes"):
        transport(moved, tmp_path / "out", votes=path, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, match", [("not json", "not_voted is 'not json', not a JSON list"),
                                          ('{"a": 1}', "not a JSON list"),
                                          ("[\"NAME\"]", "has votes but is listed as not voted")])
def test_corrupt_not_voted_metadata_is_named(chat, tmp_path, value, match):
    votes = compute_recipe_votes(prepare(Recipe.from_dict(lora_recipe(chat))), progress=False)
    name = next(iter(votes.votes))
    bad = VotesFile(votes=dict(votes.votes), evidence=dict(votes.evidence),
                    metadata={**votes.metadata, "not_voted": value.replace("NAME", name)})
    path = bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(VotesFileError, match=match):
        VotesFile.load(path)
