"""A new release whose tokenizer adds tokens to θ_A's, renumbers them or drops some: τ_A's embedding and output-head
rows are lined up by token string (gradfix_hf/plan/vocabulary.py).

Each θ_B here is another θ_B written in a new vocabulary, so the exact answer is known: rows of the tokens both
have are the rows of the transport onto the original θ_B (moved to their new ids), rows of new tokens are θ_B's
own, and every other tensor is the original transport's, bit for bit.
"""
import json
import logging
import random

import pytest
import torch
import transformers
from safetensors.torch import load_file

from conftest import WORDS, recipe_dict
from gradfix_hf import Recipe, run_recipe
from gradfix_hf.errors import CompatibilityError
from gradfix_hf.plan.vocabulary import align_vocabularies
from gradfix_hf.quickstart.chat import chat_tokenizer, conversation_rows
from gradfix_hf.quickstart.toy import word_tokenizer, write_jsonl

NEW_TOKENS = ["<new1>", "<new2>", "<new3>"]


def renumber(model, old_vocab: dict, new_vocab: dict):
    """``model`` with its token rows moved from ``old_vocab``'s ids to ``new_vocab``'s (the same function)."""
    order = torch.tensor([old_vocab[token] for token, _ in sorted(new_vocab.items(), key=lambda kv: kv[1])])
    weights = {m.weight.data_ptr(): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
               if m is not None}  # a tied pair is one weight, moved once
    with torch.no_grad():
        for weight in weights.values():
            weight.copy_(weight[order].clone())
    return order


def transported(trio_target, tmp_path, name, recipe) -> dict:
    out = tmp_path / f"out-{name}"
    result = run_recipe(Recipe.from_dict({**recipe, "models": {**recipe["models"], "target": str(trio_target)}}),
                        out, progress=False)
    return {"tensors": load_file(out / "model.safetensors"), "report": result.report, "result": result}


def test_align_vocabularies_by_token_string():
    source = {"a": 0, "b": 1, "c": 2, "gone": 3}
    target = {"c": 0, "a": 1, "b": 2, "new": 3}
    alignment = align_vocabularies(source, target, source_rows=4, target_rows=6)  # θ_B has 2 padding rows
    assert alignment.index.tolist() == [2, 0, 1, -1, -1, -1]
    assert alignment.added == ("new",) and alignment.dropped == ("gone",) and alignment.renumbered == 3
    summary = alignment.summary()
    assert summary["aligned_rows"] == 3 and summary["target_rows"] == 6 and summary["dropped_examples"] == ["gone"]
    assert align_vocabularies(source, dict(source), 4, 4) is None  # nothing to line up
    with pytest.raises(CompatibilityError, match="θ_B's tokenizer has token 'b' at an id outside its 2 embedding rows"):
        align_vocabularies(source, target, source_rows=4, target_rows=2)


@pytest.fixture(scope="module")
def bert(trios):
    return trios("bert")


def test_bert_renumbered_and_grown_vocabularies(bert, tmp_path):
    """Classification on BERT with the GradFix mask: the vote, the mask and the merge move with the tokens."""
    recipe = recipe_dict("bert", bert)
    plain = transported(bert["target"], tmp_path, "plain", recipe)
    key = "bert.embeddings.word_embeddings.weight"

    old = transformers.AutoTokenizer.from_pretrained(bert["target"])
    words = list(WORDS)
    random.Random(0).shuffle(words)
    new = word_tokenizer(words, style="bert")
    model = transformers.AutoModel.from_pretrained(bert["target"])
    order = renumber(model, old.get_vocab(), new.get_vocab())
    model.save_pretrained(tmp_path / "renumbered")
    new.save_pretrained(tmp_path / "renumbered")
    moved = transported(tmp_path / "renumbered", tmp_path, "renumbered", recipe)
    assert torch.equal(moved["tensors"][key], plain["tensors"][key][order])
    assert all(torch.equal(moved["tensors"][k], v) for k, v in plain["tensors"].items() if k != key)
    vocabulary = moved["report"]["tensors"]["vocabulary"]
    assert vocabulary["renumbered_tokens"] > 0 and vocabulary["added_tokens"] == vocabulary["dropped_tokens"] == 0

    grown_tok = transformers.AutoTokenizer.from_pretrained(bert["target"])
    grown_tok.add_tokens(NEW_TOKENS)
    grown = transformers.AutoModel.from_pretrained(bert["target"])
    grown.resize_token_embeddings(len(grown_tok), mean_resizing=False)
    grown.save_pretrained(tmp_path / "grown")
    grown_tok.save_pretrained(tmp_path / "grown")
    out = transported(tmp_path / "grown", tmp_path, "grown", recipe)
    rows = plain["tensors"][key].shape[0]
    assert out["tensors"][key].shape[0] == rows + len(NEW_TOKENS)
    assert torch.equal(out["tensors"][key][:rows], plain["tensors"][key])
    assert torch.equal(out["tensors"][key][rows:], grown.get_input_embeddings().weight[rows:].detach())  # θ_B's
    assert all(torch.equal(out["tensors"][k], v) for k, v in plain["tensors"].items() if k != key)
    assert out["report"]["tensors"]["vocabulary"]["added_examples"] == NEW_TOKENS
    assert out["result"].model.config.vocab_size == rows + len(NEW_TOKENS)  # loads with θ_B's vocabulary


def _chat_models(root, kind: str):
    """A tiny chat θ_A, θ_A^ft = θ_A + a task-like change, θ_B = θ_A + drift (no training needed for exactness)."""
    tokenizer = chat_tokenizer()
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=128, tie_word_embeddings=False,
                                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        cls = transformers.LlamaForCausalLM
    for name, seed, scale in (("source", 0, 0.0), ("source-finetuned", 1, 0.02), ("target", 2, 0.05)):
        torch.manual_seed(0)
        model = cls(config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=generator))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    write_jsonl(root / "train.jsonl", conversation_rows(12, seed=5))
    return cls, tokenizer


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_lm_grown_and_renumbered_keep_tied_weights_tied(kind, tmp_path):
    """GPT-2 (tied embedding and head) and a Llama with grouped-query attention and an untied head: both token
    tensors are lined up, and a tied pair stays one tensor."""
    cls, tokenizer = _chat_models(tmp_path, kind)
    recipe = {"objective": "sft", "models": {"source": str(tmp_path / "source"),
                                             "source_finetuned": str(tmp_path / "source-finetuned")},
              "data": {"path": str(tmp_path / "train.jsonl"), "rows": 4}, "method": {"mask": "naive", "alpha": 1.0}}
    plain = transported(tmp_path / "target", tmp_path, "plain", recipe)
    keys = ["transformer.wte.weight"] if kind == "gpt2" else ["model.embed_tokens.weight", "lm_head.weight"]

    grown_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "target")
    grown_tok.add_tokens(NEW_TOKENS)
    grown = cls.from_pretrained(tmp_path / "target")
    grown.resize_token_embeddings(len(grown_tok), mean_resizing=False)
    words = sorted(grown_tok.get_vocab(), key=lambda t: random.Random(t).random())  # and renumber every token
    renumbered = {token: i for i, token in enumerate(words)}
    order = renumber(grown, grown_tok.get_vocab(), renumbered)
    grown_tok.backend_tokenizer.model = type(grown_tok.backend_tokenizer.model)(  # the same tokens, other ids
        vocab=renumbered, unk_token=grown_tok.unk_token)
    grown.save_pretrained(tmp_path / "grown")
    grown_tok.save_pretrained(tmp_path / "grown")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "grown").get_vocab() == renumbered

    out = transported(tmp_path / "grown", tmp_path, "grown", recipe)
    rows = len(tokenizer)
    old_of_new = order  # row j of the grown θ_B holds token `words[j]`, whose row in the plain θ_B is order[j]
    for key in keys:
        got, want, theirs = out["tensors"][key], plain["tensors"][key], grown.state_dict()[key]
        for j in range(got.shape[0]):
            expected = want[old_of_new[j]] if old_of_new[j] < rows else theirs[j]  # a new token: θ_B's own row
            assert torch.equal(got[j], expected), (key, j)
    assert all(torch.equal(out["tensors"][k], v) for k, v in plain["tensors"].items() if k not in keys)
    if kind == "gpt2":
        model = out["result"].model
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    summary = out["report"]["tensors"]["vocabulary"]
    assert summary["added_tokens"] == len(NEW_TOKENS) and summary["renumbered_tokens"] > 0


def test_dropped_tokens_are_reported_and_their_rows_not_carried(bert, tmp_path, caplog):
    dropped = ["good", "bad"]
    fewer = word_tokenizer([w for w in WORDS if w not in dropped], style="bert")
    old_vocab = transformers.AutoTokenizer.from_pretrained(bert["target"]).get_vocab()
    model = transformers.AutoModel.from_pretrained(bert["target"])
    keep = torch.tensor([old_vocab[t] for t, _ in sorted(fewer.get_vocab().items(), key=lambda kv: kv[1])])
    model.resize_token_embeddings(len(fewer))
    with torch.no_grad():
        full = transformers.AutoModel.from_pretrained(bert["target"]).get_input_embeddings().weight
        model.get_input_embeddings().weight.copy_(full[keep])
    model.save_pretrained(tmp_path / "fewer")
    fewer.save_pretrained(tmp_path / "fewer")
    recipe = recipe_dict("bert", bert, method={"mask": "naive", "alpha": 1.0})
    plain = transported(bert["target"], tmp_path, "plain", recipe)
    with caplog.at_level(logging.WARNING, logger="gradfix_hf"):
        out = transported(tmp_path / "fewer", tmp_path, "fewer", recipe)
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(out["tensors"][key], plain["tensors"][key][keep])
    summary = out["report"]["tensors"]["vocabulary"]
    assert summary["dropped_tokens"] == 2 and set(summary["dropped_examples"]) == set(dropped)
    assert "lacks 2 of θ_A's tokens" in caplog.text and "'good'" in caplog.text
    report = json.loads((tmp_path / "out-fewer" / "gradfix_report.json").read_text())
    assert report["tensors"]["vocabulary"]["dropped_tokens"] == 2


def test_other_shape_differences_keep_their_error(bert, tmp_path):
    """Only the token rows may differ: a θ_B with another hidden size is refused, vocabulary or not."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert["target"])
    tokenizer.add_tokens(NEW_TOKENS)
    config = transformers.AutoConfig.from_pretrained(bert["target"])
    config.update({"vocab_size": len(tokenizer), "intermediate_size": config.intermediate_size * 2})
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "wider")
    tokenizer.save_pretrained(tmp_path / "wider")
    recipe = recipe_dict("bert", bert, models={"target": str(tmp_path / "wider")})
    with pytest.raises(CompatibilityError, match="shape"):
        run_recipe(Recipe.from_dict(recipe), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
