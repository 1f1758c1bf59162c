"""PEFT LoRA adapters in and out: an adapter on θ_A as the fine-tune (single transport, multi-task and
multi-source merges), checked against the same adapter merged by peft (``merge_and_unload``) and saved as a full
model; the result written as a LoRA adapter for θ_B (``output.as_lora`` / ``--as-lora``), loaded with
``PeftModel.from_pretrained`` and compared with the full transported model; bad adapters refused before any
gradient. Adapters are real: a few peft training steps on the toy task, in the test."""
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import huggingface_hub.constants
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from conftest import LABELS, fine_tune, recipe_dict
from gradfix_hf import prepare, transport
from gradfix_hf.cli import main
from gradfix_hf.errors import CompatibilityError, GradFixError, ModelResolutionError, RecipeError
from gradfix_hf.merge.lora_export import truncated_svd
from gradfix_hf.quickstart.toy import sentiment_rows
from gradfix_hf.recipe import Recipe

ROWS = sentiment_rows(80, seed=3)[:60]
SENTENCES = ["good great movie", "bad awful terrible film", "the plot was fine"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's fan_in_fan_out / tied-weights notices
        yield


def _seq_cls(path):
    return transformers.BertForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def _save_adapter(peft_model, tokenizer, root: Path, name: str) -> dict:
    """The adapter folder, and the same adapter merged by peft and saved as a full model (the independent path)."""
    adapter, merged = root / name, root / f"{name}-merged"
    peft_model.save_pretrained(adapter)
    full = peft_model.merge_and_unload()
    full.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return {"adapter": adapter, "merged": merged}


@pytest.fixture(scope="module")
def lora(trios, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: fan_in_fan_out flips, a 1-D lora_B bias flagged on save
        return _build_adapters(trios, tmp_path_factory)


def _build_adapters(trios, tmp_path_factory):
    """Real adapters trained a few steps: BERT rsLoRA (rank/alpha patterns, trained biases, embedding LoRA, the
    classifier in modules_to_save, a config.json with label names), a second plain BERT LoRA with lora_bias, a
    GPT-2 LoRA on Conv1D layers (fan_in_fan_out) and the tied word embedding, and a BERT LoRA on another source
    pre-training θ_C (multi-source)."""
    root = tmp_path_factory.mktemp("lora")
    bert, gpt2 = trios("bert"), trios("gpt2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert["source"])
    out = {"bert": bert, "gpt2": gpt2}

    torch.manual_seed(10)
    config = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, task_type="SEQ_CLS", bias="lora_only",
                             target_modules=["query", "value", "dense", "word_embeddings"],
                             rank_pattern={"value": 2}, alpha_pattern={"dense": 3})
    model = peft.get_peft_model(_seq_cls(bert["source"]), config)
    fine_tune("bert", model, tokenizer, ROWS, steps=6, seed=10)
    model.base_model.model.config.save_pretrained(root / "bert-rslora")  # label names next to the adapter
    out["rslora"] = _save_adapter(model, tokenizer, root, "bert-rslora")

    torch.manual_seed(11)
    config = peft.LoraConfig(r=2, lora_alpha=4, task_type="SEQ_CLS", lora_bias=True, target_modules=["key", "query"])
    model = peft.get_peft_model(_seq_cls(bert["source"]), config)
    fine_tune("bert", model, tokenizer, sentiment_rows(80, seed=11), steps=6, seed=11)
    out["plain"] = _save_adapter(model, tokenizer, root, "bert-plain")

    gpt_tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2["source"])
    torch.manual_seed(12)
    config = peft.LoraConfig(r=4, lora_alpha=16, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "wte"])
    model = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(gpt2["source"]), config)
    fine_tune("gpt2", model, gpt_tokenizer, ROWS, steps=6, seed=12)
    out["gpt"] = _save_adapter(model, gpt_tokenizer, root, "gpt2-lora")

    torch.manual_seed(2)  # θ_C: another pre-training of the same architecture, and a LoRA fine-tune of it
    other = transformers.BertModel(transformers.AutoConfig.from_pretrained(bert["source"]))
    other.save_pretrained(root / "other-source")
    tokenizer.save_pretrained(root / "other-source")
    out["other_source"] = root / "other-source"
    torch.manual_seed(13)
    config = peft.LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS", target_modules=["query", "value"])
    model = peft.get_peft_model(_seq_cls(root / "other-source"), config)
    fine_tune("bert", model, tokenizer, ROWS, steps=6, seed=13)
    out["other"] = _save_adapter(model, tokenizer, root, "other-lora")
    out["root"] = root
    return out


_RUNS: dict = {}


def _run(name: str, raw: dict, tmp_root: Path):
    """Run a recipe once per test module (outputs shared between tests)."""
    if name not in _RUNS:
        _RUNS[name] = transport(raw, str(tmp_root / name), progress=False)
    return _RUNS[name]


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


# ----------------------------------------------------------------------------------------- adapter as θ_A^ft
@pytest.mark.parametrize("kind,adapter,mask", [("bert", "rslora", "gradfix"), ("gpt2", "gpt", "naive")])
def test_adapter_as_source_equals_merged_full_finetune(lora, kind, adapter, mask):
    """τ_A read from the adapter (scaling·B·A per tensor, rsLoRA and patterns, Conv1D fan_in_fan_out, the tied
    embedding, trained biases, the classifier head) gives exactly the output of the peft-merged full fine-tune."""
    trio, root = lora[kind], lora["root"]
    outputs = {}
    for source in ("adapter", "merged"):
        raw = recipe_dict(kind, trio, method={"mask": mask})
        raw["models"]["source_finetuned"] = str(lora[adapter][source])
        outputs[source] = _run(f"{kind}-{mask}-{source}", raw, root)
    _assert_same_weights(outputs["adapter"].output_dir, outputs["merged"].output_dir, atol=1e-6)
    report = outputs["adapter"].report
    assert report["tensors"] == outputs["merged"].report["tensors"]
    described = report["models"]["models.source_finetuned"]["adapter"]
    assert described["peft_type"] == "LORA" and described["base_matches"] is True
    if kind == "bert":
        assert report["tensors"]["copied_from_finetune"] == ["classifier.weight", "classifier.bias"]
        assert described["use_rslora"] is True
        assert outputs["adapter"].model.config.id2label == {0: "negative", 1: "positive"}  # adapter's config.json
        assert report["per_tensor"]["bert.embeddings.word_embeddings.weight"]["kept_of_nonzero_tau"] > 0


def test_reader_tensors_equal_the_peft_merge(lora):
    """The adapter reader's θ_A^ft, tensor by tensor, against peft's merge_and_unload (plain LoRA + lora_bias)."""
    from gradfix_hf.plan import SOURCE_FT

    raw = recipe_dict("bert", lora["bert"])
    raw["models"]["source_finetuned"] = str(lora["plain"]["adapter"])
    raw.pop("data")
    run = prepare(Recipe.from_dict({**raw, "method": {"mask": "naive"}}))
    merged = _seq_cls(lora["plain"]["merged"]).state_dict()
    plan = run.plan
    changed = 0
    for name in plan.transported + plan.copied_from_finetune:
        ours = plan.tensor(SOURCE_FT, name)
        torch.testing.assert_close(ours, merged[name].float(), atol=1e-7, rtol=0, msg=name)
        changed += int(not torch.equal(ours, plan.tensor("models.source", name))) if name in plan.transported else 0
    assert changed == 2 * 2 * 2  # key and query of both layers: weight (B·A) and bias (lora_bias)
    assert run.models[SOURCE_FT].describe()["adapter"]["r"] == 2
    assert plan.layout.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # class count read from the saved head
    # the format of transformers' own PEFT integration (model.add_adapter + save_pretrained): no base_model.model.
    bare = lora["root"] / "plain-no-prefix"
    if not bare.exists():
        shutil.copytree(lora["plain"]["adapter"], bare)
        tensors = load_file(str(bare / "adapter_model.safetensors"))
        save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()},
                  str(bare / "adapter_model.safetensors"))
    same = prepare(Recipe.from_dict({**raw, "method": {"mask": "naive"},
                                     "models": {**raw["models"], "source_finetuned": str(bare)}})).plan
    for name in plan.transported + plan.copied_from_finetune:
        assert torch.equal(same.tensor(SOURCE_FT, name), plan.tensor(SOURCE_FT, name)), name
    # the same adapter as θ_B^ft (oracle) is read on θ_B: the same delta, on θ_B's tensors
    oracle = prepare(Recipe.from_dict({**raw, "method": {"mask": "naive"}, "models": {
        **raw["models"], "target_finetuned": str(lora["plain"]["adapter"])}})).plan
    assert oracle.readers["models.target_finetuned"].model.describe()["adapter"]["base_matches"] is False
    for name in ("bert.encoder.layer.1.attention.self.key.weight", "bert.encoder.layer.1.attention.self.key.bias"):
        torch.testing.assert_close(oracle.tensor("models.target_finetuned", name) - oracle.tensor("models.target", name),
                                   plan.tensor(SOURCE_FT, name) - plan.tensor("models.source", name), atol=1e-6, rtol=0)


def test_multi_task_and_multi_source_merges_with_adapters(lora):
    """Two adapters as the task vectors of a multi-task merge, and adapters on two sources in a multi-source
    merge: identical to the same merges of the peft-merged full fine-tunes."""
    bert, root = lora["bert"], lora["root"]
    data = {"path": str(bert["train"]), "samples_per_class": 3, "seed": 0}
    for source in ("adapter", "merged"):
        tasks = [{"name": "rs", "source_finetuned": str(lora["rslora"][source]), "data": data},
                 {"name": "plain", "source_finetuned": str(lora["plain"][source]), "data": {**data, "seed": 1}}]
        raw = {"objective": "sequence-classification",
               "models": {"source": str(bert["source"]), "target": str(bert["target"])}, "tasks": tasks,
               "method": {"name": "merge_then_mask", "mask": "gradfix", "merge": "ties", "density": 0.5,
                          "alpha": 1.0}}
        _run(f"multi-task-{source}", raw, root)
        tasks = [{"name": "a", "source": str(bert["source"]), "source_finetuned": str(lora["rslora"][source])},
                 {"name": "c", "source": str(lora["other_source"]), "source_finetuned": str(lora["other"][source])}]
        raw = {"objective": "sequence-classification", "models": {"target": str(bert["target"])}, "tasks": tasks,
               "data": data, "method": {"name": "multi_source", "mask": "gradfix", "normalize": True}}
        _run(f"multi-source-{source}", raw, root)
    for merge in ("multi-task", "multi-source"):
        adapter, merged = _RUNS[f"{merge}-adapter"], _RUNS[f"{merge}-merged"]
        _assert_same_weights(adapter.output_dir, merged.output_dir, atol=1e-6)
        assert [t["models"]["models.source_finetuned"]["adapter"]["peft_type"] for t in adapter.report["tasks"]] \
            == ["LORA", "LORA"]
        assert adapter.report["totals"]["kept_fraction"] > 0


# ----------------------------------------------------------------------------------------- result as an adapter
def _logits(model, tokenizer, kind):
    with torch.no_grad():
        if kind == "bert":  # the logits (a small random head) and the last hidden states (order 1)
            out = model(**tokenizer(SENTENCES, return_tensors="pt", padding=True), output_hidden_states=True)
            return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])
        if kind == "t5":
            labels = tokenizer(["positive"], return_tensors="pt").input_ids
            return model(**tokenizer(["review: good great movie"], return_tensors="pt"), labels=labels).logits
        ids = tokenizer("review: good great movie sentiment:").input_ids
        return model(input_ids=torch.tensor([ids])).logits


def _load(kind, trio, folder, adapter: bool):
    cls = {"bert": transformers.BertForSequenceClassification, "gpt2": transformers.GPT2LMHeadModel,
           "t5": transformers.T5ForConditionalGeneration}[kind]
    if not adapter:
        return cls.from_pretrained(folder).eval()
    base = cls.from_pretrained(trio["target"], config=transformers.AutoConfig.from_pretrained(folder))
    return peft.PeftModel.from_pretrained(base, str(folder)).eval()


@pytest.mark.parametrize("kind,adapter", [("bert", "rslora"), ("gpt2", "gpt"), ("t5", None)])
def test_as_lora_full_rank_loads_with_peft_and_matches_the_full_model(lora, trios, kind, adapter):
    """At full rank the adapter reproduces the full transported model: LoRA on Linear / Conv1D / embeddings (the
    tied GPT-2 lm_head and T5's shared / encoder / decoder embeddings and lm_head too), changed biases stored
    whole, LayerNorms (T5: RMS norms) and the new head as modules_to_save."""
    trio, root = lora.get(kind) or trios(kind), lora["root"]
    raw = recipe_dict(kind, trio, method={"mask": "naive"}, output={"as_lora": {"rank": 64}})
    raw["models"]["source_finetuned"] = str(lora[adapter]["adapter"] if kind == "gpt2" else trio["source_finetuned"])
    result = transport(raw, str(root / f"{kind}-as-lora-full"), progress=False)
    full_raw = {**raw, "output": {}}
    full = _run(f"{kind}-naive-full-for-export", full_raw, root)
    folder = result.output_dir
    assert not list(folder.glob("model*.safetensors")) and (folder / "adapter_model.safetensors").is_file()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(trio["target"])
    report = result.report["lora"]
    assert report["totals"]["max_relative_error"] < 1e-5
    assert result.report["per_tensor"].keys() == full.report["per_tensor"].keys()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ours = _logits(_load(kind, trio, folder, adapter=True), tokenizer, kind)
    reference = _logits(_load(kind, trio, full.output_dir, adapter=False), tokenizer, kind)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
    if kind == "bert":  # a full fine-tune: every kind of changed tensor is exercised
        assert "classifier" in report["modules_to_save"]
        assert any(m.endswith("LayerNorm") for m in report["modules_to_save"])
        assert any(n.endswith(".bias") for n in report["bias_tensors"]) and config["bias"] == "all"
        assert report["modules"]["bert.embeddings.word_embeddings"]["kind"] == "embedding"
        assert result.model(**tokenizer(SENTENCES, return_tensors="pt", padding=True)).logits.shape == (3, 2)
        card = (folder / "README.md").read_text()
        assert "library_name: peft" in card and "## LoRA adapter" in card
    elif kind == "t5":
        assert report["tied"] == {"encoder.embed_tokens": "shared", "decoder.embed_tokens": "shared",
                                  "lm_head": "shared"}
        assert "encoder.final_layer_norm" in report["modules_to_save"] and config["task_type"] == "SEQ_2_SEQ_LM"
    else:
        assert report["tied"] == {"lm_head": "transformer.wte"}
        assert report["modules"]["transformer.h.0.attn.c_proj"]["kind"] == "conv1d" and config["fan_in_fan_out"]
        zero_shot = _logits(_load(kind, trio, trio["target"], adapter=False), tokenizer, kind)
        assert (reference - zero_shot).abs().max() > 1e-2  # the transport did change the model


def test_as_lora_low_rank_error_is_the_reported_one(lora):
    """At low rank each module's reported ‖D − B·A‖_F/‖D‖_F is exactly the distance between the adapter merged into
    θ_B and the full transported model; energy thresholds pick per-module ranks (rank_pattern)."""
    bert, root = lora["bert"], lora["root"]
    full = _run("bert-gradfix-full-for-export", recipe_dict("bert", bert), root)
    target = _seq_cls(bert["target"]).state_dict()
    full_weights = _weights(full.output_dir)
    for spec in ({"rank": 1}, {"energy": 0.6, "rank": 3}):
        raw = recipe_dict("bert", bert, output={"as_lora": spec})
        result = transport(raw, str(root / f"bert-as-lora-{'-'.join(map(str, spec.values()))}"), progress=False)
        report = result.report["lora"]
        merged = _load("bert", bert, result.output_dir, adapter=True).merge_and_unload().state_dict()
        for module, entry in report["modules"].items():
            name = entry["tensor"]
            delta = full_weights[name] - target[name]
            error = float((merged[name] - full_weights[name]).norm() / delta.norm())
            assert error == pytest.approx(entry["relative_error"], rel=1e-3, abs=1e-6), module
            assert 0 < entry["rank"] <= spec["rank"]
            if "energy" in spec:
                assert entry["energy_kept"] >= 0.6 or entry["rank"] == 3
        if spec == {"rank": 1}:
            assert all(entry["rank"] == 1 for entry in report["modules"].values())
            assert 0.05 < report["totals"]["relative_error"] < 1
        else:
            assert len({entry["rank"] for entry in report["modules"].values()}) > 1
            assert json.loads((result.output_dir / "adapter_config.json").read_text())["rank_pattern"]


def test_truncated_svd_rank_energy_and_error():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(20, 5))
    v, _ = torch.linalg.qr(torch.randn(12, 5))
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    delta = (u * s) @ v.T
    total = float((s ** 2).sum())
    for rank in (1, 2, 5, 40):
        f = truncated_svd(delta, rank, None)
        k = min(rank, 5)  # never above the numerical rank (5 of 12 columns)
        assert f.rank == k and f.left.shape == (20, k) and f.right.shape == (k, 12)
        expected = (float((s[k:] ** 2).sum()) / total) ** 0.5
        assert f.relative_error == pytest.approx(expected, abs=1e-5)
        assert float((f.left @ f.right - delta).norm() / delta.norm()) == pytest.approx(f.relative_error, abs=1e-6)
    assert truncated_svd(delta, None, 0.9).rank == 2  # 64 / 85.25 = 0.751 < 0.9 ≤ (64 + 16) / 85.25 = 0.938
    assert truncated_svd(delta, None, 0.95).rank == 3
    assert truncated_svd(delta, 1, 0.95).rank == 1
    assert truncated_svd(delta, None, 1.0).rank == 5


def test_cli_as_lora_and_lora_energy(lora, tmp_path, capsys):
    import yaml

    bert = lora["bert"]
    raw = recipe_dict("bert", bert)
    raw["models"]["source_finetuned"] = str(lora["rslora"]["adapter"])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--as-lora", "2", "--lora-energy", "0.99", "-o", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "LoRA adapter:" in printed and "relative reconstruction error" in printed
    report = json.loads((tmp_path / "out" / "gradfix_report.json").read_text())
    assert report["lora"]["rank"] == 2 and report["lora"]["energy"] == 0.99
    assert yaml.safe_load((tmp_path / "out" / "gradfix_recipe.yaml").read_text())["output"]["as_lora"] == {
        "rank": 2, "energy": 0.99}
    assert main(["run", str(path), "--as-lora", "0", "-o", str(tmp_path / "bad")]) == 2
    assert "output.as_lora.rank: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("as_lora,message", [
    ({"rnak": 4}, "unknown key 'rnak'. Did you mean 'rank'?"),
    ({"energy": 1.5}, "output.as_lora.energy: must be a number in (0, 1]"),
    ({}, "give a rank"),
    (8, None),
])
def test_recipe_as_lora_validation(lora, as_lora, message):
    raw = recipe_dict("bert", lora["bert"], output={"as_lora": as_lora})
    if message is None:
        assert Recipe.from_dict(raw).output.as_lora.rank == 8
        return
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_dict(raw)


# ----------------------------------------------------------------------------------------- bad adapters
def _variant_adapter(bert, root: Path, name: str, **config_changes) -> Path:
    """An adapter (non-zero B) made on a BERT whose architecture differs from θ_A's."""
    config = transformers.AutoConfig.from_pretrained(bert["source"])
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.BertForSequenceClassification(config),
                                peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.save_pretrained(root / name)
    return root / name


def _prepare_with(bert, adapter, role="source_finetuned"):
    raw = recipe_dict("bert", bert)
    raw["models"][role] = str(adapter)
    return prepare(Recipe.from_dict(raw))


def test_adapter_for_another_architecture_is_refused(lora, tmp_path):
    bert = lora["bert"]
    deeper = _variant_adapter(bert, tmp_path, "deeper", num_hidden_layers=3)
    with pytest.raises(CompatibilityError, match=r"adapter .*deeper\).*LoRA module 'bert\.encoder\.layer\.2\."
                                                 r"attention\.self\.(query|value)' has no weight .*another "
                                                 r"architecture"):
        _prepare_with(bert, deeper)
    wider = _variant_adapter(bert, tmp_path, "wider", hidden_size=48, intermediate_size=96)
    with pytest.raises(CompatibilityError, match=r"wider\).*gives a delta of shape \[48, 48\].*has \[32, 32\]"):
        _prepare_with(bert, wider)
    with pytest.raises(CompatibilityError, match=r"made for GPT2LMHeadModel \(model_type 'gpt2'\).*'bert'"):
        _prepare_with(bert, lora["gpt"]["adapter"])
    with pytest.raises(CompatibilityError, match="is a LoRA adapter, not a full model"):
        _prepare_with(bert, lora["rslora"]["adapter"], role="target")


def test_corrupt_or_unsupported_adapter_files_are_refused(lora, tmp_path):
    bert, good = lora["bert"], lora["plain"]["adapter"]

    def copy(name):
        shutil.copytree(good, tmp_path / name)
        return tmp_path / name

    truncated = copy("truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelResolutionError, match=r"models\.source_finetuned: corrupt or truncated .*"
                                                   r"adapter_model\.safetensors"):
        _prepare_with(bert, truncated)

    bad_json = copy("bad-json")
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelResolutionError, match=r"cannot read the adapter config .*adapter_config\.json"):
        _prepare_with(bert, bad_json)

    missing = copy("missing-weights")
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelResolutionError, match="has adapter_config.json but no adapter weights"):
        _prepare_with(bert, missing)

    half = copy("half-factor")
    tensors = load_file(str(half / "adapter_model.safetensors"))
    del tensors[next(k for k in tensors if k.endswith("lora_B.weight"))]
    save_file(tensors, str(half / "adapter_model.safetensors"))
    with pytest.raises(ModelResolutionError, match="but not both LoRA factors"):
        _prepare_with(bert, half)

    nan = copy("nan")
    tensors = load_file(str(nan / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(nan / "adapter_model.safetensors"))
    with pytest.raises(GradFixError, match=r"models\.source_finetuned \(.*nan\) tensor .* NaN/inf"):
        _prepare_with(bert, nan)

    dora = copy("dora")
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "lora_bias": False}))
    with pytest.raises(ModelResolutionError, match=r"uses DoRA \(use_dora\), which .*merge_and_unload"):
        _prepare_with(bert, dora)

    pickled = copy("pickled")
    torch.save(load_file(str(pickled / "adapter_model.safetensors")), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelResolutionError, match="only has pickle weights"):
        _prepare_with(bert, pickled)

    out = tmp_path / "never"
    raw = recipe_dict("bert", bert)
    raw["models"]["source_finetuned"] = str(truncated)
    with pytest.raises(ModelResolutionError):
        transport(raw, str(out), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".never.partial-*"))


# ----------------------------------------------------------------------------------------- an adapter on the Hub
def test_adapter_from_the_hub_cache(lora, tmp_path, monkeypatch):
    """An adapter repo (adapter_config.json + adapter_model.safetensors, no config.json) pulled by id and revision
    from the (offline) Hub cache, pinned to its commit in the report."""
    commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd"
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = cache / "models--org--tiny-lora"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for source in sorted(lora["plain"]["adapter"].iterdir()):
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    bert = lora["bert"]
    raw = recipe_dict("bert", bert)
    raw["models"]["source_finetuned"] = {"path": "org/tiny-lora", "revision": "main"}
    run = prepare(Recipe.from_dict(raw))
    described = run.models["models.source_finetuned"].describe()
    assert described["repo_id"] == "org/tiny-lora" and described["commit_hash"] == commit
    assert described["adapter"]["r"] == 2
    local = prepare(Recipe.from_dict({**raw, "models": {**raw["models"],
                                                        "source_finetuned": str(lora["plain"]["adapter"])}}))
    for name in run.plan.transported:
        assert torch.equal(run.plan.tensor("models.source_finetuned", name),
                           local.plan.tensor("models.source_finetuned", name))
