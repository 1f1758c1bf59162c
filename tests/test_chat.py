"""SFT rows (messages, prompt-completion, text) as token ids and loss masks: gradfix_hf/objectives/chat.py.

Tiny word-level tokenizers (and one byte-level BPE) with real-world chat templates: Llama 3 and ChatML/Qwen2
(no generation markers), Zephyr (no markers, newlines between its tags), and ChatML with ``{% generation %}``
markers, whose masks are compared with transformers' ``return_assistant_tokens_mask``.
"""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gradfix_hf.errors import DataError, RecipeError
from gradfix_hf.objectives.chat import FORMATS, detect_format, render_row

WHERE = "data (train.jsonl) row 12"
WORDS = ("system user assistant tool You are a helpful assistant. Be brief . What is the capital of France ? Paris "
         "And Germany Berlin weather sunny call get_weather <think> </think> hmm, hello").split()

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Qwen2's template without tools: a default system prompt when the conversation has none
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
          "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
ZEPHYR_SPECIALS = ["<|user|>", "<|system|>", "<|assistant|>", "</s>", "<s>"]
MARKED = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
          "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}"
          "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# DeepSeek-R1 style: earlier assistant turns lose their reasoning, so a conversation's prefix renders differently
STRIPPING = ("{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
             "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<|im_start|>' + m['role'] + '\n' }}"
             "{% if m['role'] == 'assistant' %}{% generation %}{{ c + '<|im_end|>\n' }}{% endgeneration %}"
             "{% else %}{{ c + '<|im_end|>\n' }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}")

CONVERSATION = [{"role": "system", "content": "Be brief ."},
                {"role": "user", "content": "What is the capital of France ?"},
                {"role": "assistant", "content": "Paris ."},
                {"role": "user", "content": "And Germany ?"},
                {"role": "assistant", "content": "Berlin ."}]


class _NoOffsets(PreTrainedTokenizerFast):
    """A tokenizer that says it has no offsets (like a slow one): the token-prefix fallback is used."""

    @property
    def is_fast(self):
        return False


def word_chat_tokenizer(template, specials, *, bos=None, eos=None, cls=PreTrainedTokenizerFast):
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<unk>", "<pad>", *specials, *WORDS]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    tokenizer = cls(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token=bos, eos_token=eos)
    tokenizer.chat_template = template
    return tokenizer


def llama3(**kw):
    return word_chat_tokenizer(LLAMA3, LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", **kw)


def chatml(template=CHATML, **kw):
    return word_chat_tokenizer(template, CHATML_SPECIALS, eos="<|im_end|>", **kw)


def zephyr(**kw):
    return word_chat_tokenizer(ZEPHYR, ZEPHYR_SPECIALS, bos="<s>", eos="</s>", **kw)


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(list(ids))


def masked(tokenizer, rendered):
    return tokens(tokenizer, [i for i, m in zip(rendered.input_ids, rendered.loss_mask) if m])


def render(row, tokenizer, fmt="messages", **kw):
    kw.setdefault("max_length", 512)
    return render_row(row, fmt, tokenizer, where=WHERE, **kw)


def test_llama3_multi_turn_masks_every_assistant_turn_with_its_eot():
    tok = llama3()
    out = render({"messages": CONVERSATION}, tok)
    assert masked(tok, out) == ["Paris", ".", "<|eot_id|>", "Berlin", ".", "<|eot_id|>"]
    assert tokens(tok, out.input_ids) == tokens(tok, tok.apply_chat_template(CONVERSATION)["input_ids"])
    headers = [i for i, t in enumerate(tokens(tok, out.input_ids)) if t in ("<|start_header_id|>", "assistant")]
    assert not any(out.loss_mask[i] for i in headers)
    assert out.loss_mask == [False] * 22 + [True] * 3 + [False] * 10 + [True] * 3
    prompt = tok.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True)["input_ids"]
    assert out.prompt_ids == list(prompt)
    assert tokens(tok, out.prompt_ids)[-3:] == ["<|start_header_id|>", "assistant", "<|end_header_id|>"]
    assert out.reference == "Berlin ."
    assert out.truncated is False and len(out.loss_mask) == len(out.input_ids)


def test_chatml_masks_im_end_but_not_the_next_header():
    tok = chatml()
    out = render({"messages": CONVERSATION[1:]}, tok)  # no system: the template adds its default one
    toks = tokens(tok, out.input_ids)
    assert toks[:3] == ["<|im_start|>", "system", "You"]
    assert masked(tok, out) == ["Paris", ".", "<|im_end|>", "Berlin", ".", "<|im_end|>"]
    first_end = toks.index("Paris") + 2
    assert toks[first_end:first_end + 2] == ["<|im_end|>", "<|im_start|>"]
    assert out.loss_mask[first_end] and not out.loss_mask[first_end + 1]
    assert tokens(tok, out.prompt_ids)[-2:] == ["<|im_start|>", "assistant"]


def test_zephyr_template_with_newlines_between_tags():
    tok = zephyr()
    out = render({"messages": CONVERSATION}, tok)
    assert masked(tok, out) == ["Paris", ".", "</s>", "Berlin", ".", "</s>"]
    assert tokens(tok, out.prompt_ids)[-1] == "<|assistant|>"


def test_byte_level_bpe_tokens_line_up_and_decode_to_the_assistant_text():
    corpus = ["What is the capital of France?\n\nParis.", "And Germany? Berlin. Be brief.", "assistant user\n\n"] * 5
    for template, specials, expected in (
            (LLAMA3, LLAMA3_SPECIALS, "Paris.<|eot_id|>Berlin.<|eot_id|>"),
            (CHATML, CHATML_SPECIALS, "Paris.<|im_end|>\nBerlin.<|im_end|>\n")):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[-1])
        tokenizer.chat_template = template
        conversation = [{**m, "content": m["content"].replace(" .", ".").replace(" ?", "?")} for m in CONVERSATION]
        out = render({"messages": conversation}, tokenizer)
        assert tokenizer.decode([i for i, m in zip(out.input_ids, out.loss_mask) if m]) == expected


def test_generation_markers_give_transformers_assistant_mask():
    tok = chatml(MARKED)
    out = render({"messages": CONVERSATION}, tok)
    reference = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert out.input_ids == list(reference["input_ids"])
    assert out.loss_mask == [bool(m) for m in reference["assistant_masks"]]
    assert masked(tok, out) == ["Paris", ".", "<|im_end|>", "Berlin", ".", "<|im_end|>"]
    # the same template without its markers: the prefix renders find the same tokens
    plain = MARKED.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert render({"messages": CONVERSATION}, chatml(plain)).loss_mask == out.loss_mask
    # a tokenizer without offsets (transformers cannot mask there) falls back to the prefix renders
    assert render({"messages": CONVERSATION}, chatml(MARKED, cls=_NoOffsets)).loss_mask == out.loss_mask


def test_no_offsets_fallback_compares_token_prefixes():
    for make in (llama3, chatml, zephyr):
        fast, slow = make(), make(cls=_NoOffsets)
        a, b = render({"messages": CONVERSATION}, fast), render({"messages": CONVERSATION}, slow)
        assert (a.input_ids, a.loss_mask, a.prompt_ids) == (b.input_ids, b.loss_mask, b.prompt_ids)


def test_tool_turns_are_not_trained():
    tok = chatml()
    conversation = [{"role": "user", "content": "weather ?"},
                    {"role": "assistant", "content": "call get_weather"},
                    {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "sunny ."}]
    out = render({"messages": conversation}, tok)
    assert masked(tok, out) == ["call", "get_weather", "<|im_end|>", "sunny", ".", "<|im_end|>"]
    toks = tokens(tok, out.input_ids)
    assert toks[toks.index("tool") + 1] == "sunny" and not out.loss_mask[toks.index("tool") + 1]


def test_none_valued_extra_keys_are_allowed():
    rows = [{**m, "name": None, "tool_calls": None} for m in CONVERSATION]  # as datasets fills missing keys
    tok = llama3()
    assert render({"messages": rows}, tok).loss_mask == render({"messages": CONVERSATION}, tok).loss_mask


def test_reasoning_stripping_template_is_refused_without_markers_and_works_with_them():
    conversation = [{"role": "user", "content": "What is the capital of France ?"},
                    {"role": "assistant", "content": "<think> hmm, </think> Paris ."},
                    {"role": "user", "content": "And Germany ?"},
                    {"role": "assistant", "content": "<think> hmm, </think> Berlin ."}]
    plain = STRIPPING.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(DataError, match="not prefix-preserving") as err:
        render({"messages": conversation}, chatml(plain))
    assert WHERE in str(err.value) and "strip reasoning" in str(err.value) and "data.chat_template" in str(err.value)
    tok = chatml(STRIPPING)
    out = render({"messages": conversation}, tok)
    assert masked(tok, out) == ["Paris", ".", "<|im_end|>", "<think>", "hmm,", "</think>", "Berlin", ".",
                                "<|im_end|>"]


def test_prompt_completion_strings_add_eos_like_trl():
    tok = zephyr()
    row = {"prompt": "What is the capital of France ?", "completion": " Paris ."}
    out = render(row, tok, "prompt-completion")
    assert tokens(tok, out.input_ids) == "What is the capital of France ? Paris . </s>".split()
    assert masked(tok, out) == ["Paris", ".", "</s>"]
    assert out.prompt_ids == tok("What is the capital of France ?")["input_ids"]
    assert out.reference == " Paris ."
    again = render({**row, "completion": " Paris .</s>"}, tok, "prompt-completion")  # already ends with EOS
    assert again.input_ids == out.input_ids
    everything = render(row, tok, "prompt-completion", loss_tokens="all")
    assert everything.loss_mask == [True] * len(out.input_ids)


def test_prompt_completion_messages_train_only_the_completion():
    prompt = CONVERSATION[:4]  # with an assistant turn inside the prompt: not trained
    completion = CONVERSATION[4:]
    for make in (llama3, lambda: chatml(MARKED)):
        tok = make()
        out = render({"prompt": prompt, "completion": completion}, tok, "prompt-completion")
        assert masked(tok, out)[:2] == ["Berlin", "."] and len(masked(tok, out)) == 3
        assert out.prompt_ids == list(tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"])
        assert out.reference == "Berlin ."
        assert out.input_ids == render({"messages": CONVERSATION}, tok).input_ids


def test_text_trains_every_token():
    tok = chatml()
    for loss_tokens in ("completion", "all"):
        out = render({"text": "Paris is the capital of France ."}, tok, "text", loss_tokens=loss_tokens)
        assert tokens(tok, out.input_ids) == "Paris is the capital of France . <|im_end|>".split()
        assert out.loss_mask == [True] * 8 and out.prompt_ids == [] and out.reference == ""


def test_loss_tokens_all_covers_the_whole_conversation():
    tok = llama3()
    out = render({"messages": CONVERSATION}, tok, loss_tokens="all")
    assert all(out.loss_mask) and len(out.loss_mask) == 38
    assert out.prompt_ids == render({"messages": CONVERSATION}, tok).prompt_ids
    no_assistant = render({"messages": CONVERSATION[:2]}, tok, loss_tokens="all")  # fine when all tokens count
    assert all(no_assistant.loss_mask) and no_assistant.reference == ""


def test_truncation_keeps_the_start_and_refuses_rows_left_without_loss_tokens():
    tok = llama3()
    full = render({"messages": CONVERSATION}, tok)
    cut = render({"messages": CONVERSATION}, tok, max_length=30)
    assert cut.truncated and cut.input_ids == full.input_ids[:30] and cut.loss_mask == full.loss_mask[:30]
    assert masked(tok, cut) == ["Paris", ".", "<|eot_id|>"]
    with pytest.raises(DataError) as err:
        render({"messages": CONVERSATION}, tok, max_length=20)
    message = str(err.value)
    assert WHERE in message and "too long for max_length=20" in message and "data.max_length" in message
    assert "at least 23" in message and "38" in message
    assert render({"text": "What is the capital"}, tok, "text", max_length=2).truncated


@pytest.mark.parametrize("row, fmt, expected", [
    ({"messages": [{"role": "user", "content": "hello"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "human", "content": "hello"}, {"role": "assistant", "content": "hello"}]}, "messages",
     "unknown role 'human'"),
    ({"messages": ["hello", {"role": "assistant", "content": "hello"}]}, "messages",
     "message 0 in 'messages' is not a {'role', 'content'} mapping"),
    ({"messages": [{"from": "human", "value": "hello"}]}, "messages", "ShareGPT"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "hi"}]}, "messages", "not a {'role', 'content'}"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "hi"}]}, "messages",
     "content of type NoneType, not a string"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "messages",
     "content of type list, not a string"),
    ({"messages": []}, "messages", "empty conversation"),
    ({"messages": "user: hello"}, "messages", "must be a list of messages"),
    ({"conversation": []}, "messages", "no column 'messages'"),
    ({"prompt": "hello", "completion": [{"role": "assistant", "content": "hi"}]}, "prompt-completion",
     "'prompt' is a string but 'completion' is a list of messages"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": "hello"}, "prompt-completion",
     "'prompt' is a list of messages but 'completion' is a string"),
    ({"prompt": "hello", "completion": None}, "prompt-completion", "column 'completion' is null"),
    ({"prompt": "hello", "completion": ""}, "prompt-completion", "column 'completion' is empty"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": []}, "prompt-completion",
     "column 'completion' is empty"),
    ({"prompt": [], "completion": [{"role": "assistant", "content": "hi"}]}, "prompt-completion",
     "'prompt' is an empty conversation"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "hi"}]},
     "prompt-completion", "the completion has no assistant turn"),
    ({"prompt": 3, "completion": "hi"}, "prompt-completion", "must be a string or a list of messages"),
    ({"text": ""}, "text", "column 'text' is empty"),
    ({"text": ["hello"]}, "text", "must be a string"),
    ({"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]}, "messages",
     "starts with an assistant turn"),
])
def test_bad_rows_name_the_row_and_the_reason(row, fmt, expected):
    with pytest.raises(DataError) as err:
        render(row, llama3(), fmt)
    assert str(err.value).startswith(WHERE + ":") and expected in str(err.value)


def test_template_errors_and_misaligned_tokens_are_data_errors():
    with pytest.raises(DataError, match="chat template rejects this conversation: Conversation roles must alternate"):
        render({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hi"}]}, chatml(ALTERNATING))
    glued = "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '\n' }}{% endfor %}" \
            "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    with pytest.raises(DataError, match="do not line up") as err:  # 'assistant:Paris' is one token
        render({"messages": CONVERSATION[1:3]}, chatml(glued))
    assert "assistant:' | 'Paris .\\n'" in str(err.value)


def test_a_tokenizer_without_chat_template_needs_data_chat_template():
    tok = word_chat_tokenizer(None, LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>")
    with pytest.raises(DataError, match="no chat template.*data.chat_template") as err:
        render({"messages": CONVERSATION}, tok)
    assert str(err.value).startswith(WHERE)
    with pytest.raises(DataError, match="data.chat_template"):
        render({"prompt": CONVERSATION[:2], "completion": CONVERSATION[2:3]}, tok, "prompt-completion")
    given = render({"messages": CONVERSATION}, tok, chat_template=LLAMA3)
    assert given.loss_mask == render({"messages": CONVERSATION}, llama3()).loss_mask
    assert render({"text": "hello"}, tok, "text").loss_mask == [True, True]  # text needs no template


def test_arguments_are_checked_and_columns_renamed():
    tok = llama3()
    for kwargs, expected in (({"fmt": "message"}, "Did you mean 'messages'"),
                             ({"loss_tokens": "assistant"}, "loss_tokens must be one of"),
                             ({"max_length": 0}, "max_length must be a positive integer"),
                             ({"columns": {"conversation": "x"}}, "unknown column key")):
        args = {"fmt": "messages", "max_length": 64, **kwargs}
        with pytest.raises(RecipeError, match=expected):
            render_row({"messages": CONVERSATION}, args.pop("fmt"), tok, **args)
    renamed = render_row({"conversation": CONVERSATION}, "messages", tok, max_length=64,
                         columns={"messages": "conversation"})
    assert renamed.loss_mask == render({"messages": CONVERSATION}, tok).loss_mask


def test_detect_format():
    assert FORMATS == ("messages", "prompt-completion", "text")
    assert detect_format(["messages", "id"], "auto", where=WHERE) == "messages"
    assert detect_format(["prompt", "completion"], None, where=WHERE) == "prompt-completion"
    assert detect_format(["text", "label"], "auto", where=WHERE) == "text"
    assert detect_format(["conv"], None, where=WHERE, messages_column="conv") == "messages"
    assert detect_format(["q", "a"], None, where=WHERE, prompt_column="q", completion_column="a") == "prompt-completion"
    # ultrachat_200k has prompt, prompt_id and messages: the recipe says which to use
    assert detect_format(["prompt", "completion", "messages"], "messages", where=WHERE) == "messages"
    with pytest.raises(DataError) as err:
        detect_format(["prompt", "completion", "messages"], "auto", where=WHERE)
    message = str(err.value)
    assert message.startswith(WHERE) and "data.format" in message and "'messages'" in message
    assert "'prompt', 'completion'" in message
    with pytest.raises(DataError, match="no SFT columns") as err:
        detect_format(["question", "answer"], None, where=WHERE)
    assert "'messages'" in str(err.value) and "'text'" in str(err.value) and "['answer', 'question']" in str(err.value)
    with pytest.raises(DataError, match="'prompt' without 'completion'"):
        detect_format(["prompt", "label"], "auto", where=WHERE)
    with pytest.raises(DataError, match="has no column 'completion'"):
        detect_format(["prompt"], "prompt-completion", where=WHERE)
    with pytest.raises(DataError, match="Did you mean 'messages'"):
        detect_format(["messages"], "message", where=WHERE)
