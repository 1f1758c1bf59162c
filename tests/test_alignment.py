"""``align: weight-matching``: θ_A and θ_A^ft permuted into θ_B's basis before τ_A is taken (gradfix_hf/plan/
alignment.py, rules in permutations.py).

θ_B here is θ_A with its residual stream (embeddings, norms, every projection's residual side) and every layer's
feed-forward units and attention heads shuffled (key/value heads with their query groups under grouped-query
attention): the same function in other coordinates, which the test checks first — so the
rules are a true symmetry of each architecture. Weight matching must then find the permutation exactly: naive
addition after alignment gives θ_B + P(τ_A) = P(θ_A^ft), the fine-tune itself in θ_B's coordinates, which computes
what θ_A^ft computes; without alignment it does not.
"""
import pytest
import torch
import transformers
from safetensors.torch import load_file

from gradfix_hf import Recipe, run_recipe
from gradfix_hf.errors import CompatibilityError, RecipeError
from gradfix_hf.plan.permutations import permute_state_dict, random_symmetry

VOCAB = 40


def tiny(kind: str):
    if kind == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=32, num_labels=2))
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False))


def permuted_copy(model, seed: int):
    """``model`` with its residual stream and every group's units in a random order (the rules' own symmetry), and
    the orders used."""
    orders = random_symmetry(model.state_dict(), model.config, seed)
    copy = type(model)(model.config)
    copy.load_state_dict(permute_state_dict(model.state_dict(), model.config, orders))
    return copy.eval(), orders


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_weight_matching_recovers_a_permuted_release_exactly(kind, tmp_path):
    torch.manual_seed(0)
    source = tiny(kind).eval()
    finetuned = tiny(kind).eval()
    with torch.no_grad():  # θ_A^ft = θ_A + a task vector on every tensor
        for p, q in zip(finetuned.parameters(), source.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    target, orders = permuted_copy(source, seed=1)
    ids = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(logits(target, ids), logits(source, ids), atol=1e-5, rtol=1e-5)  # a symmetry
    assert all((order != torch.arange(len(order))).any() for order in orders.values())
    for name, model in (("source", source), ("source_finetuned", finetuned), ("target", target)):
        model.save_pretrained(tmp_path / name)
    objective = "sequence-classification" if kind == "bert" else "causal-lm"
    recipe = {"objective": objective, "method": {"mask": "naive", "alpha": 1.0},
              "models": {r: str(tmp_path / r) for r in ("source", "source_finetuned", "target")}}

    result = run_recipe(Recipe.from_dict({**recipe, "align": "weight-matching"}), tmp_path / "aligned",
                        progress=False)
    expected = permuted_copy(finetuned, seed=1)[0].state_dict()  # P(θ_A^ft), with the same orders
    out = load_file(tmp_path / "aligned" / "model.safetensors")
    for name, tensor in out.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(logits(result.model.eval(), ids), logits(finetuned, ids), atol=1e-4, rtol=1e-4)
    alignment = result.report["tensors"]["alignment"]
    assert alignment["groups"] == len(orders) and alignment["moved_units"] > 0
    moved = {key: int((order != torch.arange(len(order))).sum()) for key, order in orders.items()}
    assert sorted(q["moved"] for q in alignment["per_group"].values()) == sorted(moved.values())
    assert alignment["per_group"]["residual"]["moved"] == moved["residual"]
    for group, quality in alignment["per_group"].items():
        assert quality["cosine_after"] == pytest.approx(1.0, abs=1e-5) and quality["cosine_before"] < 0.9999

    run_recipe(Recipe.from_dict(recipe), tmp_path / "plain", progress=False)  # without alignment: not θ_A^ft
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    assert any(not torch.allclose(plain[n], expected[n], atol=1e-3) for n in plain)


def test_alignment_bad_input(trios, tmp_path):
    t5 = trios("t5")
    recipe = {"objective": "seq2seq", "method": {"mask": "naive", "alpha": 1.0}, "align": "weight-matching",
              "models": {r: str(t5[r]) for r in ("source", "source_finetuned", "target")}}
    with pytest.raises(CompatibilityError, match="no permutation rules for model_type 't5' .*bert, gpt2, llama, qwen2"):
        run_recipe(Recipe.from_dict(recipe), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(RecipeError, match="align"):
        Recipe.from_dict({**recipe, "align": "weight_matching"})


def test_a_close_pair_is_left_as_it_is(tmp_path):
    """θ_B = θ_A plus a small drift (a continued training): weight matching moves no unit, and the result is the
    unaligned run's, bit for bit."""
    torch.manual_seed(0)
    source, finetuned, target = tiny("llama"), tiny("llama"), tiny("llama")
    with torch.no_grad():
        for a, ft, b in zip(source.parameters(), finetuned.parameters(), target.parameters()):
            ft.copy_(a + 0.05 * torch.randn_like(a))
            b.copy_(a + 0.01 * torch.randn_like(a))
    for name, model in (("source", source), ("source_finetuned", finetuned), ("target", target)):
        model.save_pretrained(tmp_path / name)
    recipe = {"objective": "causal-lm", "method": {"mask": "naive", "alpha": 1.0},
              "models": {r: str(tmp_path / r) for r in ("source", "source_finetuned", "target")}}
    aligned = run_recipe(Recipe.from_dict({**recipe, "align": "weight-matching"}), tmp_path / "a", progress=False)
    run_recipe(Recipe.from_dict(recipe), tmp_path / "b", progress=False)
    assert aligned.report["tensors"]["alignment"]["moved_units"] == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
