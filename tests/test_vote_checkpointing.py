"""Activation checkpointing during the vote (``vote_gradient_checkpointing``): the votes do not change.

Each block is recomputed in the backward (checked by counting its forward calls), and the votes, their evidence
and metadata are bitwise those of the vote that keeps every activation, for classification (BERT), causal LM
(GPT-2), seq2seq (T5, whose relative-position bias is computed in the first block) and SFT (Llama); also with θ_B
sharded by FSDP2 over 2 processes.
"""
import pytest
import torch
import yaml

from conftest import recipe_dict
from gradfix_hf import Recipe, VotesFile, compute_recipe_votes, prepare
from gradfix_hf.errors import RecipeError
from gradfix_hf.plan import load_base_model
from gradfix_hf.plan.checkpointing import checkpoint_blocks
from gradfix_hf.votes import compute_votes_batched
from test_distributed import launch, one_thread
from test_fsdp_votes import WORKER, assert_same_votes


def _recipe(kind, trios, quickstart_root) -> Recipe:
    if kind == "sft":
        chat = quickstart_root[0] / "gradfix-quickstart" / "chat"
        return Recipe.from_dict({
            "objective": "sft", "vote_batch_size": 2,
            "models": {"source": str(chat / "source"), "source_finetuned": str(chat / "source-finetuned"),
                       "target": str(chat / "target")},
            "data": {"path": str(chat / "data" / "train.jsonl"), "rows": 5}})
    return Recipe.from_dict(recipe_dict(kind, trios(kind), data={"samples_per_class": 3}, vote_batch_size=2))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5", "sft"])
def test_checkpointed_votes_are_bitwise_the_votes_that_keep_activations(kind, trios, quickstart_root):
    recipe = _recipe(kind, trios, quickstart_root)
    with one_thread():
        kept = compute_recipe_votes(prepare(recipe), progress=False)
        recomputed = compute_recipe_votes(prepare(recipe.replace(vote_gradient_checkpointing=True)), progress=False)
    assert_same_votes(kept, recomputed)
    votes = torch.cat([v.flatten().to(torch.int64) for v in kept.votes.values()])
    assert bool(((votes.abs() < kept.n_samples) & (votes != 0)).any())  # samples disagree somewhere


def test_each_block_is_recomputed_in_the_backward(quickstart_root, trios):
    prepared = prepare(_recipe("sft", trios, quickstart_root))
    counts = {}
    for checkpointed in (False, True):
        model = load_base_model(prepared.plan)
        blocks = checkpoint_blocks(model) if checkpointed else 0
        calls = []  # the block's calls, recomputations included (a recomputation stops once it has what it needs)
        model.model.layers[0].register_forward_pre_hook(lambda *args: calls.append(torch.is_grad_enabled()))
        with one_thread():
            compute_votes_batched(model, prepared.objective, prepared.examples, list(prepared.voted_shapes),
                                  micro_batch_size=2, progress=False)
        counts[checkpointed] = (blocks, len(calls))
    micro_batches = -(-len(prepared.examples) // 2)
    probe = 2  # two no-grad forwards classify the calls
    assert counts[False] == (0, probe + micro_batches)
    assert counts[True] == (len(model.model.layers), probe + 2 * micro_batches)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(RecipeError, match="names no blocks"):
        checkpoint_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(RecipeError, match="vote_gradient_checkpointing"):
        Recipe.from_dict({"models": {"source": "a", "source_finetuned": "b", "target": "c"},
                          "vote_gradient_checkpointing": "yes"})


def test_checkpointed_votes_with_fsdp2(trios, quickstart_root, tmp_path):
    paths, single = [], {}
    for kind in ("t5", "sft"):
        recipe = _recipe(kind, trios, quickstart_root).replace(vote_gradient_checkpointing=True)
        path = tmp_path / f"{kind}.yaml"
        path.write_text(recipe.to_yaml())
        paths.append(str(path))
        with one_thread():
            single[kind] = compute_recipe_votes(prepare(recipe.replace(vote_gradient_checkpointing=False)),
                                                progress=False)
    out = tmp_path / "out"
    out.mkdir()
    launch(2, str(WORKER), str(out), "fsdp", *paths)
    for kind in ("t5", "sft"):
        assert_same_votes(single[kind], VotesFile.load(out / f"{kind}.safetensors.index.json"))
    assert yaml.safe_load(open(paths[0]))["vote_gradient_checkpointing"] is True
