"""Chat and instruction fine-tunes (``objective: sft``) end to end, on the tiny chat pair ``gradfix quickstart
--chat`` builds: a 2-layer Llama with a ChatML template, its full and LoRA chat fine-tunes, toy conversations.

Scores are checked against an independent computation (the NLL of the assistant tokens from
``apply_chat_template``), the α choice against the sweep's own table, the report's row counts against the
tokenizer's lengths, and the bad inputs against the errors a user should get before any gradient work.
"""
import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from gradfix_hf import Recipe, prepare, sweep, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import DataError, GradFixError, RecipeError


@pytest.fixture(scope="module")
def chat(quickstart_root):
    return quickstart_root[0] / "gradfix-quickstart" / "chat"


def conversations(chat, split, count=None):
    lines = (chat / "data" / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:count]]


def sft_recipe(chat, *, data=None, evaluation=None, method=None, models=None, output=None) -> dict:
    recipe = {"objective": "sft",
              "models": {"source": str(chat / "source"), "source_finetuned": str(chat / "source-finetuned"),
                         "target": str(chat / "target"), **(models or {})},
              "data": {"path": str(chat / "data" / "train.jsonl"), "rows": 8, **(data or {})},
              "method": method or {"mask": "naive", "alpha": 1.0}}
    if evaluation is not None:
        recipe["evaluation"] = {"path": str(chat / "data" / "validation.jsonl"), "max_samples": 12, **evaluation}
    if output is not None:
        recipe["output"] = output
    return recipe


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def template_ids(tokenizer, messages, generation_prompt=False) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def assistant_nll(model, tokenizer, rows) -> float:
    """Token-weighted NLL of each conversation's last assistant turn, from the chat template directly."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = template_ids(tokenizer, row["messages"][:-1], generation_prompt=True)
            full = template_ids(tokenizer, row["messages"])
            assert full[:len(prompt)] == prompt
            logits = model(input_ids=torch.tensor([full])).logits[0]
            targets = torch.tensor(full[len(prompt):])
            log_probs = torch.log_softmax(logits[len(prompt) - 1:-1].float(), -1)
            total -= float(log_probs.gather(1, targets[:, None]).sum())
            count += len(targets)
    return total / count


# ---------------------------------------------------------------------------------------------------------------
# what a run gives


def test_python_api_scores_and_returns_a_chat_model(chat, tmp_path):
    """transport() writes a chat model with θ_B's template: its NLL is the independent computation's, perplexity
    is exp(NLL), ROUGE-L compares greedy answers, and pipeline("text-generation") chats with it."""
    recipe = sft_recipe(chat, evaluation={"metrics": ["nll", "perplexity", "rouge"], "max_new_tokens": 20})
    result = transport(recipe, tmp_path / "out", progress=False)
    evaluation = result.evaluation
    assert evaluation["metric"] == "nll" and evaluation["metrics"] == ["nll", "perplexity", "rouge"]
    rows = {r["method"]: r["scores"] for r in evaluation["rows"]}
    assert set(rows) == {"zero-shot", "few-shot", "naive"}
    for scores in rows.values():
        assert scores["perplexity"] == pytest.approx(math.exp(scores["nll"]), rel=1e-9)
        assert 0 <= scores["rouge"] <= 1
    assert rows["naive"]["nll"] < rows["zero-shot"]["nll"] - 1 and rows["naive"]["rouge"] > rows["zero-shot"]["rouge"]

    tokenizer = AutoTokenizer.from_pretrained(chat / "target")
    validation = conversations(chat, "validation", 12)
    assert rows["naive"]["nll"] == pytest.approx(assistant_nll(result.model, tokenizer, validation), rel=1e-5)
    target = AutoModelForCausalLM.from_pretrained(chat / "target")
    assert rows["zero-shot"]["nll"] == pytest.approx(assistant_nll(target, tokenizer, validation), rel=1e-5)

    assert result.tokenizer.chat_template == tokenizer.chat_template
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == \
        json.loads((chat / "target" / "generation_config.json").read_text())  # θ_B's decoding defaults
    card = (tmp_path / "out" / "README.md").read_text()
    assert "train.jsonl" in card and "nll" in card and f"{rows['naive']['nll']:.4f}" in card
    generate = pipeline("text-generation", model=result.model, tokenizer=result.tokenizer)
    reply = generate(validation[0]["messages"][:-1], max_new_tokens=12, do_sample=False)[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and reply["content"].startswith("feeling words :")
    notes = result.report["data_notes"]["sft"]
    assert notes["rows"] == 8 and notes["format"] == "messages" and notes["rows_without_loss_token"] == 0


def test_batched_generation_equals_one_conversation_at_a_time(chat):
    """Generation metrics decode in left-padded batches of mixed prompt lengths: each row's text is the one greedy
    decoding of that conversation alone gives (from apply_chat_template directly), in row order."""
    from gradfix_hf.metrics import generated_texts

    prepared = prepare(Recipe.from_dict(sft_recipe(chat, evaluation={"metrics": ["nll", "rouge"]})))
    samples = prepared.eval_samples
    rows = samples.rows
    tokenizer = AutoTokenizer.from_pretrained(chat / "target")
    model = AutoModelForCausalLM.from_pretrained(chat / "source-finetuned").eval()
    lengths = {len(template_ids(tokenizer, row["messages"][:-1], generation_prompt=True)) for row in rows}
    assert len(lengths) > 2  # the batch really pads
    texts, references = generated_texts(prepared.objective, model, samples, max_new_tokens=10, batch_size=5)
    expected = []
    for row in rows:
        ids = torch.tensor([template_ids(tokenizer, row["messages"][:-1], generation_prompt=True)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert texts == expected and any(texts)
    assert references == [row["messages"][-1]["content"].strip() for row in rows]


def test_sweep_and_auto_pick_the_lowest_nll(chat):
    """Lower is better for NLL: the sweep's α per method and auto's candidate are the minima of its own table."""
    recipe = sft_recipe(chat, method={"name": "auto", "candidates": ["naive", "gradfix"]},
                        evaluation={"alphas": [0.5, 1.0, 1.5], "test_path": str(chat / "data" / "test.jsonl")})
    result = sweep(recipe, progress=False)
    assert result.metric == "nll" and set(result.methods) >= {"naive", "gradfix"}
    for entry in result.methods.values():
        scores = {float(a): s for a, s in entry["validation"].items()}
        assert entry["best_alpha"] == min(scores, key=scores.get)
        assert entry["best_validation"] == min(scores.values())
    candidates = {k: result.methods[k]["best_validation"] for k in ("naive", "gradfix")}
    assert result.chosen["key"] == min(candidates, key=candidates.get)
    assert result.chosen["key"] == "naive"  # a close release: naive addition beats the mask (docs/sft.md)


@pytest.mark.parametrize("fmt", ["prompt-completion", "text"])
def test_other_formats_run_from_the_cli(chat, fmt, tmp_path, capsys):
    """Prompt/completion pairs (plain strings, no chat template) and plain text run from the CLI; the report
    says which format the rows had; with plain text every token carries the loss."""
    rows = []
    for row in conversations(chat, "train", 40):
        user, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        rows.append({"prompt": user + " answer :", "completion": " " + answer} if fmt == "prompt-completion"
                    else {"text": f"{user} {answer}"})
    path = write_rows(tmp_path / "rows.jsonl", rows)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(sft_recipe(chat, data={"path": str(path)})))
    assert main(["run", str(recipe_path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "gradfix_report.json").read_text())
    notes = report["data_notes"]["sft"]
    assert notes["format"] == fmt and notes["rows"] == 8 and notes["loss_tokens"] == "completion"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.model_type == "llama"


def test_report_counts_truncated_and_skipped_rows(chat, tmp_path):
    """With a short data.max_length, a row longer than it is truncated, and a row whose assistant tokens all lie
    beyond it is skipped (it has nothing to predict); the counts are the tokenizer's."""
    tokenizer = AutoTokenizer.from_pretrained(chat / "target")
    rows = conversations(chat, "train", 10)
    for row in rows[:4]:  # longer prompts: a system turn
        row["messages"].insert(0, {"role": "system", "content": "list the feeling words and the verdict . " * 3})
    path = write_rows(tmp_path / "rows.jsonl", rows)
    limit = 36
    expect_skipped = expect_truncated = 0
    for row in rows:
        prompt = len(template_ids(tokenizer, row["messages"][:-1], generation_prompt=True))
        full = len(template_ids(tokenizer, row["messages"]))
        expect_skipped += prompt >= limit
        expect_truncated += prompt < limit < full
    assert expect_skipped and expect_truncated  # the case is really exercised
    prepared = prepare(Recipe.from_dict(sft_recipe(chat, data={"path": str(path), "rows": 10, "max_length": limit})))
    notes = prepared.data_notes["sft"]
    assert notes["rows_without_loss_token"] == expect_skipped == len(notes["skipped_rows"])
    assert notes["truncated_rows"] == expect_truncated
    assert len(prepared.examples) == 10 - expect_skipped
    assert all(e["input_ids"].shape[1] <= limit and (e["labels"] != -100).any() for e in prepared.examples)
    with pytest.raises(DataError, match="every one of the 10 rows is too long for data.max_length=12"):
        prepare(Recipe.from_dict(sft_recipe(chat, data={"path": str(path), "rows": 10, "max_length": 12})))


def test_lora_in_lora_out_keeps_trained_embeddings_whole(chat, tmp_path):
    """A chat LoRA that trained embed_tokens/lm_head whole (modules_to_save) gives an adapter for θ_B that stores
    them whole too: θ_B + adapter computes what the full output computes. ``modules_to_save: []`` factors them."""
    from peft import PeftModel

    models = {"source_finetuned": str(chat / "source-lora")}
    full = transport(sft_recipe(chat, models=models), tmp_path / "full", progress=False)
    adapter = transport(sft_recipe(chat, models=models, output={"as_lora": {"rank": 8}}), tmp_path / "lora",
                        progress=False)
    lora = adapter.report["lora"]
    assert lora["task_type"] == "CAUSAL_LM" and lora["modules_to_save"] == ["lm_head", "model.embed_tokens"]
    assert lora["totals"]["relative_error"] < 1e-5
    ids = torch.tensor([template_ids(AutoTokenizer.from_pretrained(chat / "target"),
                                     conversations(chat, "test", 1)[0]["messages"])])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat / "target"), tmp_path / "lora")
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, full.model(input_ids=ids).logits, atol=1e-4)

    factored = transport(sft_recipe(chat, models=models, output={"as_lora": {"rank": 8, "modules_to_save": []}}),
                         tmp_path / "factored", progress=False).report["lora"]
    assert factored["modules_to_save"] == [] and "lm_head" in factored["modules"]
    assert factored["totals"]["relative_error"] > 0.01  # a full-rank delta at rank 8


# ---------------------------------------------------------------------------------------------------------------
# bad input: a clear error naming the field, file or row, before any gradient work, and nothing written


def test_recipe_errors(chat):
    recipe = sft_recipe(chat)
    del recipe["data"]["rows"]
    with pytest.raises(RecipeError, match=r"data.rows: objective 'sft' votes on N rows"):
        Recipe.from_dict(recipe)
    with pytest.raises(RecipeError, match="data.rows"):
        Recipe.from_dict(sft_recipe(chat, data={"rows": 0}))
    with pytest.raises(RecipeError, match="data.format"):
        Recipe.from_dict(sft_recipe(chat, data={"format": "chatml"}))
    with pytest.raises(RecipeError, match="data.loss_tokens"):
        Recipe.from_dict(sft_recipe(chat, data={"loss_tokens": "assistant"}))
    with pytest.raises(RecipeError, match="evaluation.max_new_tokens"):
        Recipe.from_dict(sft_recipe(chat, evaluation={"max_new_tokens": 0}))
    with pytest.raises(RecipeError, match="only objective 'sft' renders rows with another tokenizer"):
        Recipe.from_dict({**sft_recipe(chat, data={"tokenizer": str(chat / "source")}), "objective": "causal-lm"})
    with pytest.raises(RecipeError, match=r"evaluation.metrics: 'nll' is a score of SFT data"):
        Recipe.from_dict({**sft_recipe(chat, evaluation={"metrics": ["nll"]}), "objective": "causal-lm"})


def _fails_before_work(recipe: dict, tmp_path, error, match):
    """``prepare`` raises ``error``; the full run raises it too and writes nothing."""
    with pytest.raises(error, match=match):
        prepare(Recipe.from_dict(recipe))
    with pytest.raises(error, match=match):
        transport(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("case", ["no assistant turn", "unknown role", "both shapes", "not a list"])
def test_bad_rows_are_named(chat, tmp_path, case):
    rows = conversations(chat, "train", 6)
    if case == "no assistant turn":
        rows[3]["messages"] = rows[3]["messages"][:-1]
        match = r"row 3: .*assistant"
    elif case == "unknown role":
        rows[2]["messages"][-2]["role"] = "human"
        match = r"row 2: .*'human'"
    elif case == "both shapes":
        rows = [{**r, "prompt": "a", "completion": "b"} for r in rows]
        match = r"data.format"
    else:
        rows[1]["messages"] = "hello"
        match = r"row 1: .*messages"
    path = write_rows(tmp_path / "bad.jsonl", rows)
    _fails_before_work(sft_recipe(chat, data={"path": str(path), "rows": 6}), tmp_path, (DataError, RecipeError),
                       match)


def test_missing_chat_template_is_named_and_can_be_given(chat, tmp_path):
    """θ_B's tokenizer has no chat template (a base release): the error says so and how to give one;
    data.chat_template (a file) then renders the conversations, and the output carries it."""
    target = tmp_path / "target"
    shutil.copytree(chat / "target", target)
    (target / "chat_template.jinja").unlink()
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    recipe = sft_recipe(chat, models={"target": str(target)})
    _fails_before_work(recipe, tmp_path, DataError, "chat template.*data.chat_template")
    template = tmp_path / "template.jinja"
    template.write_text(AutoTokenizer.from_pretrained(chat / "target").chat_template)
    result = transport(sft_recipe(chat, models={"target": str(target)}, data={"chat_template": str(template)}),
                       tmp_path / "ok", progress=False)
    assert result.tokenizer.chat_template == template.read_text()
    with pytest.raises(DataError, match="neither a Jinja template nor an existing file"):
        prepare(Recipe.from_dict(sft_recipe(chat, data={"chat_template": str(tmp_path / "missing.jinja")})))
    # data.tokenizer: another tokenizer (here the fine-tune's, which has the template) renders the rows
    named = transport(sft_recipe(chat, models={"target": str(target)}, data={"tokenizer": str(chat / "source")}),
                      tmp_path / "named", progress=False)
    assert named.tokenizer.chat_template == AutoTokenizer.from_pretrained(chat / "source").chat_template
    assert AutoTokenizer.from_pretrained(tmp_path / "named").chat_template == named.tokenizer.chat_template
    bigger = AutoTokenizer.from_pretrained(chat / "source")
    bigger.add_tokens([f"extra{i}" for i in range(AutoModelForCausalLM.from_pretrained(chat / "target")
                                                    .config.vocab_size)])
    bigger.save_pretrained(tmp_path / "bigger")
    _fails_before_work(sft_recipe(chat, data={"tokenizer": str(tmp_path / "bigger")}), tmp_path, DataError,
                       r"data.tokenizer: .* tokens but models.target's embeddings hold")
    _fails_before_work(sft_recipe(chat, data={"tokenizer": str(tmp_path / "nowhere")}), tmp_path, DataError,
                       "data.tokenizer: cannot load a tokenizer from")


def test_metrics_that_do_not_fit_sft_are_refused(chat, tmp_path):
    with pytest.raises((RecipeError, GradFixError), match="accuracy"):
        prepare(Recipe.from_dict(sft_recipe(chat, evaluation={"metrics": ["accuracy"]})))
    rows = [{"text": " ".join(m["content"] for m in r["messages"])} for r in conversations(chat, "train", 12)]
    path = write_rows(tmp_path / "text.jsonl", rows)
    recipe = sft_recipe(chat, data={"path": str(path)}, evaluation={"path": str(path), "metrics": ["nll", "rouge"]})
    with pytest.raises(GradFixError, match="text metrics need rows with a prompt"):
        transport(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_quickstart_chat_from_the_cli(chat, tmp_path, capsys):
    """``gradfix quickstart --chat`` reuses a built chat pair, runs the packaged chat recipe (the same file as
    recipes/sft-chat.yaml) and prints the auto choice and the NLL table; the output chats like θ_B."""
    from pathlib import Path

    from gradfix_hf.quickstart import CHAT_RECIPE_PATH

    repo_recipe = Path(__file__).resolve().parents[1] / "recipes" / "sft-chat.yaml"
    assert repo_recipe.read_text() == CHAT_RECIPE_PATH.read_text()
    workdir = tmp_path / "qs"
    shutil.copytree(chat, workdir / "chat")
    assert main(["quickstart", "--chat", "--workdir", str(workdir), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "reusing the tiny models" in err and "building" not in err
    report = json.loads((workdir / "chat" / "output-auto" / "gradfix_report.json").read_text())
    auto = report["auto"]
    assert f"method auto: chose {auto['label']} at α={auto['alpha']:g} (nll {auto['validation']:.4f}" in out
    assert "nll" in out and "perplexity" in out and "zero-shot" in out
    rows = {r["method"]: r for r in report["evaluation"]["rows"]}
    assert rows["zero-shot"]["score"] > min(r["score"] for r in rows.values())  # the transport lowers the NLL
    tokenizer = AutoTokenizer.from_pretrained(workdir / "chat" / "output-auto")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(chat / "target").chat_template
