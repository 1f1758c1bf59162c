"""The vote's compute dtype (``vote_dtype``): θ_B in bfloat16 or float16 for the forward and backward, float32
where the counting needs it (the layer rules form per-sample gradients from float32 copies of each layer's
factors; the votes are integers).

A low-precision vote is not the float32 vote: its gradients are rounded. What must hold is that it votes the same
sign where the float32 vote is unanimous (every sample's gradient agreed), that ``auto`` is float32 on a CPU
(bitwise the float32 vote), and that the file and the votes cache keep the two apart.
"""
import pytest
import torch
import yaml

from gradfix_hf import Recipe, RecipeError, VotesFile, compute_recipe_votes, prepare
from gradfix_hf.cli import main
from gradfix_hf.transport import vote_key

from conftest import recipe_dict


def chat_recipe(chat, **top) -> dict:
    return {"objective": "sft",
            "models": {"source": str(chat / "source"), "source_finetuned": str(chat / "source-finetuned"),
                       "target": str(chat / "target")},
            "data": {"path": str(chat / "data" / "train.jsonl"), "rows": 8},
            "method": {"mask": "gradfix", "alpha": 1.0}, "vote_batch_size": 4, **top}


@pytest.fixture(scope="module")
def chat(quickstart_root):
    return quickstart_root[0] / "gradfix-quickstart" / "chat"


def agreement(low, full) -> tuple[float, float]:
    """(share of coordinates whose sign differs, share of the unanimous ones, |v_fp32| = N, whose sign differs)."""
    differ = clear = clear_differ = 0
    total = 0
    for name, v in full.votes.items():
        w = low.votes[name].to(v.dtype)
        total += v.numel()
        differ += int((torch.sign(v) != torch.sign(w)).sum())
        strong = v.abs() == full.n_samples
        clear += int(strong.sum())
        clear_differ += int((strong & (torch.sign(v) != torch.sign(w))).sum())
    return differ / total, clear_differ / max(clear, 1)


@pytest.mark.parametrize("kind", ["llama-chat", "gpt2", "bert"])
def test_low_precision_votes_agree_where_the_vote_is_clear(kind, chat, trios):
    def recipe(**top):
        if kind == "llama-chat":
            return Recipe.from_dict(chat_recipe(chat, **top))
        return Recipe.from_dict(recipe_dict(kind, trios(kind), **top))

    full = compute_recipe_votes(prepare(recipe()), progress=False)
    assert full.metadata["vote_dtype"] == "float32"
    for dtype in ("bfloat16", "float16"):
        low = compute_recipe_votes(prepare(recipe(vote_dtype=dtype)), progress=False)
        assert low.metadata["vote_dtype"] == dtype and set(low.votes) == set(full.votes)
        flipped, clear_flipped = agreement(low, full)
        assert 0 < flipped < 0.10  # rounded gradients: some coordinates differ, few
        assert clear_flipped < 0.01  # a unanimous float32 vote survives the rounding
    explicit = compute_recipe_votes(prepare(recipe(vote_dtype="float32")), progress=False)
    assert all(torch.equal(explicit.votes[n], full.votes[n]) for n in full.votes)  # auto on a CPU is float32


def test_the_dtype_keeps_votes_apart_and_is_checked(chat, tmp_path, capsys):
    prepared = {d: prepare(Recipe.from_dict(chat_recipe(chat, vote_dtype=d))) for d in ("auto", "float32", "bfloat16")}
    keys = {d: vote_key(p) for d, p in prepared.items()}
    assert keys["auto"] == keys["float32"] != keys["bfloat16"]  # a votes cache never mixes them
    with pytest.raises(RecipeError, match="vote_dtype: 'int8' is not one of"):
        Recipe.from_dict(chat_recipe(chat, vote_dtype="int8"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(chat_recipe(chat)))
    out = tmp_path / "votes.safetensors"
    assert main(["votes", str(recipe), "-o", str(out), "--vote-dtype", "bfloat16", "--no-progress"]) == 0
    assert VotesFile.load(out).metadata["vote_dtype"] == "bfloat16"
