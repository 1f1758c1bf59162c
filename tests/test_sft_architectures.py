"""``objective: sft`` on the other causal-LM families people rebase: tiny Qwen2- and GPT-2-style models built from
configs with the chat pair's ChatML tokenizer (the Llama-style pair is ``gradfix quickstart --chat``, tested in
test_sft.py). θ_A is pre-trained a few steps, θ_A^ft fine-tuned on conversations, θ_B continues θ_A's training on
other text. Checked: the batched votes are the one-row loop's, the loss covers the assistant tokens only, and the
sweep scores NLL and picks each method's α at its minimum.
"""
import pytest
import transformers

from conftest import assert_votes_agree, reference_grads
from gradfix_hf import Recipe, prepare, sweep
from gradfix_hf.plan import load_base_model
from gradfix_hf.quickstart.chat import chat_tokenizer, conversation_rows, pretraining_rows, train_causal_lm
from gradfix_hf.quickstart.toy import write_jsonl
from gradfix_hf.votes import compute_votes_batched


def tiny_causal_lm(kind: str, tokenizer):
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if kind == "qwen2":
        config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=128, tie_word_embeddings=True, **ids)
        return transformers.Qwen2ForCausalLM(config)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                     **ids)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])
def pair(request, tmp_path_factory):
    kind, root = request.param, tmp_path_factory.mktemp(f"sft-{request.param}")
    tokenizer = chat_tokenizer()
    rows = conversation_rows(160, seed=5)
    write_jsonl(root / "train.jsonl", rows[:100])
    write_jsonl(root / "validation.jsonl", rows[100:130])
    write_jsonl(root / "test.jsonl", rows[130:])
    cls = type(tiny_causal_lm(kind, tokenizer))
    transformers.set_seed(0)
    model = tiny_causal_lm(kind, tokenizer)
    train_causal_lm(model, tokenizer, pretraining_rows(400, seed=1, topic_size=12), steps=30, lr=3e-3, seed=1)
    for name, train, steps, seed in (("source", None, 0, 0), ("source-finetuned", rows[:100], 40, 2),
                                     ("target", pretraining_rows(400, seed=3, topic_size=6), 20, 3)):
        tuned = cls.from_pretrained(root / "source") if name != "source" else model
        if train is not None:
            train_causal_lm(tuned, tokenizer, train, steps=steps, lr=2e-3, seed=seed)
        tuned.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return kind, root


def sft_recipe(root, **extra) -> dict:
    return {"objective": "sft", "models": {"source": str(root / "source"),
                                           "source_finetuned": str(root / "source-finetuned"),
                                           "target": str(root / "target")},
            "data": {"path": str(root / "train.jsonl"), "rows": 6, "seed": 1},
            "method": {"mask": "gradfix", "alpha": 1.0}, **extra}


def test_votes_equal_the_per_row_loop(pair):
    kind, root = pair
    prepared = prepare(Recipe.from_dict(sft_recipe(root)))
    assert prepared.plan.layout.config.model_type == kind
    names = prepared.plan.transported
    for example in prepared.examples:  # the assistant's answer and its end-of-turn only
        scored = (example["labels"] != -100).sum()
        assert 0 < scored < example["labels"].shape[1] // 2
    fast = compute_votes_batched(load_base_model(prepared.plan), prepared.objective, prepared.examples, names,
                                 micro_batch_size=4, progress=False)
    grads = reference_grads(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names)
    assert_votes_agree(fast, grads, names)


def test_sweep_on_nll(pair):
    kind, root = pair
    evaluation = {"path": str(root / "validation.jsonl"), "test_path": str(root / "test.jsonl"),
                  "alphas": [0.5, 1.0, 1.5]}
    result = sweep(sft_recipe(root, evaluation=evaluation), progress=False)
    assert result.metric == "nll"
    zero = result.zero_shot["test"]
    for key in ("naive", "gradfix"):
        entry = result.methods[key]
        scores = {float(a): s for a, s in entry["validation"].items()}
        assert entry["best_alpha"] == min(scores, key=scores.get)
        assert all(s > 0 for s in scores.values())
    assert result.methods["naive"]["test"] < zero  # the fine-tune's answers carry over to θ_B
