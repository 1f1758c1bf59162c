"""End-to-end transport: output tensors equal the formula, the folder loads and runs in pipeline(...)."""
import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, pipeline

from conftest import recipe_dict
from gradfix_hf import Recipe, VotesFile, compute_recipe_votes, prepare, transport
from gradfix_hf.merge.streaming import MergeJob, apply_in_memory
from gradfix_hf.plan import load_base_model


def _weights(folder):
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        merged = {}
        for name in files:
            merged.update(load_file(folder / name))
        return merged
    return load_file(folder / "model.safetensors")


def _strip(name):
    return name[len("bert."):] if name.startswith("bert.") else name


@pytest.fixture(scope="module")
def bert_votes(trios, tmp_path_factory):
    trio = trios("bert")
    recipe = Recipe.from_dict(recipe_dict("bert", trio))
    path = tmp_path_factory.mktemp("votes") / "votes.safetensors"
    compute_recipe_votes(prepare(recipe), progress=False).save(path)
    return path


def test_output_tensors_equal_formula(trios, bert_votes, tmp_path):
    trio = trios("bert")
    alpha = 0.7
    result = transport(recipe_dict("bert", trio, method={"alpha": alpha}), tmp_path / "out", votes=bert_votes,
                       progress=False)
    out = _weights(result.output_dir)
    source, target = _weights(trio["source"]), _weights(trio["target"])
    finetuned = _weights(trio["source_finetuned"])
    votes = VotesFile.load(bert_votes)
    checked = 0
    for name, tensor in out.items():
        if name.startswith("classifier."):
            assert torch.equal(tensor, finetuned[name]), name  # new head: copied, not voted or masked
            continue
        tau = finetuned[name] - source[_strip(name)]
        s = torch.sign(votes.votes[name])
        mask = (torch.sign(tau) == s) & (s != 0)
        expected = target[_strip(name)] + alpha * tau * mask
        assert torch.allclose(tensor, expected, atol=1e-6), name
        checked += 1
    assert checked == len(votes.votes) > 20
    assert set(out) == set(votes.votes) | {"classifier.weight", "classifier.bias"}
    per = result.report["per_tensor"]
    emb = per["bert.embeddings.word_embeddings.weight"]
    assert 0 < emb["kept_fraction"] < 1
    assert emb["votes"]["no_evidence"] > 0  # tokens absent from the 6 samples got no vote


def test_output_folder_contents_and_pipeline(trios, tmp_path):
    trio = trios("bert")
    result = transport(recipe_dict("bert", trio), tmp_path / "out", progress=False)
    folder = result.output_dir
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "gradfix_report.json", "gradfix_recipe.yaml", "README.md",
            "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    report = result.report
    assert report["method"] == {"name": "gradfix", "alpha": 0.5, "mask": "gradfix", "no_evidence": "drop",
                                "no_evidence_scale": 0.5, "min_margin": 0.0, "seed": 0, "rho": 1.0}
    assert report["votes"]["n_samples"] == 6
    assert report["tensors"]["copied_from_finetune"] == ["classifier.weight", "classifier.bias"]
    assert 0 < report["totals"]["kept_fraction"] < 1
    assert Recipe.from_yaml(folder / "gradfix_recipe.yaml") == Recipe.from_dict(recipe_dict("bert", trio))
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert set(front["tags"]) >= {"gradfix", "merge", "task-vector-transport"}
    assert front["pipeline_tag"] == "text-classification" and front["library_name"] == "transformers"
    assert "α = 0.5" in card
    classifier = pipeline("text-classification", model=result.model, tokenizer=result.tokenizer)
    prediction = classifier("good great lovely")[0]
    assert prediction["label"] in {"negative", "positive"} and 0.0 <= prediction["score"] <= 1.0
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    enc = result.tokenizer(["good bad"], return_tensors="pt")
    assert torch.equal(reloaded(**enc).logits, result.model(**enc).logits)


def test_folder_equals_in_memory_application(trios, bert_votes, tmp_path):
    """The streamed folder and the in-memory application (used for held-out scores) give the same model."""
    trio = trios("bert")
    recipe = Recipe.from_dict(recipe_dict("bert", trio))
    result = transport(recipe, tmp_path / "out", votes=bert_votes, progress=False)
    prepared = prepare(recipe)
    model = load_base_model(prepared.plan)
    apply_in_memory(model, MergeJob.single(prepared.plan, VotesFile.load(bert_votes), "gradfix", 0.5))
    enc = result.tokenizer(["good bad ugly", "happy warm"], return_tensors="pt", padding=True)
    assert torch.allclose(model(**enc).logits, result.model(**enc).logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_text_to_text_outputs_run_in_text_generation_pipeline(trios, tmp_path, kind):
    trio = trios(kind)
    result = transport(recipe_dict(kind, trio), tmp_path / "out", progress=False)
    assert (result.output_dir / "generation_config.json").is_file()
    generator = pipeline("text-generation", model=result.model, tokenizer=result.tokenizer)
    text = generator("review: good great", max_new_tokens=2, do_sample=False)[0]["generated_text"]
    assert isinstance(text, str) and text
    assert result.report["tensors"]["copied_from_finetune"] == []  # no new head: the LM head is transported
    assert result.report["votes"]["n_samples"] == 6


def test_sharded_output_and_dtype(trios, bert_votes, tmp_path):
    trio = trios("bert")
    single = transport(recipe_dict("bert", trio), tmp_path / "single", votes=bert_votes, progress=False)
    sharded = transport(recipe_dict("bert", trio, output={"max_shard_size": "20KB"}), tmp_path / "sharded",
                        votes=bert_votes, progress=False)
    shards = sorted(p.name for p in sharded.output_dir.glob("model-*.safetensors"))
    assert len(shards) > 2 and all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", s) for s in shards)
    assert not (sharded.output_dir / "model.safetensors").exists()
    a, b = _weights(single.output_dir), _weights(sharded.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    enc = single.tokenizer(["good"], return_tensors="pt")
    assert torch.equal(single.model(**enc).logits, sharded.model(**enc).logits)
    half = transport(recipe_dict("bert", trio, output={"dtype": "bfloat16"}), tmp_path / "bf16", votes=bert_votes,
                     progress=False)
    assert {t.dtype for t in _weights(half.output_dir).values()} == {torch.bfloat16}


def test_alpha_sweep_reuses_votes_and_scales_linearly(trios, bert_votes, tmp_path):
    trio = trios("bert")
    target = _weights(trio["target"])
    deltas = {}
    for alpha in (0.25, 1.0):
        result = transport(recipe_dict("bert", trio, method={"alpha": alpha}), tmp_path / f"a{alpha}",
                           votes=bert_votes, progress=False)
        assert result.report["votes"]["file"] == str(bert_votes)
        out = _weights(result.output_dir)
        deltas[alpha] = {k: out[k] - target[_strip(k)] for k in out if not k.startswith("classifier.")}
    for name, delta in deltas[1.0].items():
        assert torch.allclose(delta, 4 * deltas[0.25][name], atol=1e-5), name


def test_oracle_and_mean_masks(trios, tmp_path):
    trio = trios("bert")
    models = {**recipe_dict("bert", trio)["models"], "target_finetuned": str(trio["target_finetuned"])}
    oracle = transport(recipe_dict("bert", trio, models=models, method={"mask": "oracle", "alpha": 1.0}),
                       tmp_path / "oracle", progress=False)
    assert oracle.report["votes"] is None
    out, target = _weights(oracle.output_dir), _weights(trio["target"])
    source, finetuned = _weights(trio["source"]), _weights(trio["source_finetuned"])
    target_ft = _weights(trio["target_finetuned"])
    name = "bert.encoder.layer.0.attention.self.query.weight"
    tau = finetuned[name] - source[_strip(name)]
    tau_b = target_ft[name] - target[_strip(name)]
    expected = target[_strip(name)] + tau * ((torch.sign(tau) == torch.sign(tau_b)) & (tau_b != 0))
    assert torch.allclose(out[name], expected, atol=1e-6)
    mean = transport(recipe_dict("bert", trio, method={"mask": "mean"}), tmp_path / "mean", progress=False)
    assert mean.report["votes"]["aggregation"] == "mean"
    assert 0 < mean.report["totals"]["kept_fraction"] < 1


def test_no_evidence_keep_restores_untouched_embedding_rows(trios, bert_votes, tmp_path):
    trio = trios("bert")
    keep = transport(recipe_dict("bert", trio, method={"no_evidence": "keep", "alpha": 1.0}), tmp_path / "keep",
                     votes=bert_votes, progress=False)
    drop = transport(recipe_dict("bert", trio, method={"alpha": 1.0}), tmp_path / "drop", votes=bert_votes,
                     progress=False)
    name = "bert.embeddings.word_embeddings.weight"
    evidence = VotesFile.load(bert_votes).has_evidence(name)
    untouched = ~evidence[:, 0]
    assert untouched.any()
    target, finetuned, source = _weights(trio["target"]), _weights(trio["source_finetuned"]), _weights(trio["source"])
    tau = finetuned[name] - source[_strip(name)]
    kept_rows = _weights(keep.output_dir)[name][untouched]
    assert torch.allclose(kept_rows, (target[_strip(name)] + tau)[untouched], atol=1e-6)
    assert torch.equal(_weights(drop.output_dir)[name][untouched], target[_strip(name)][untouched])
    assert keep.report["totals"]["kept_fraction"] > drop.report["totals"]["kept_fraction"]


def test_vote_margin_and_no_evidence_scale_from_the_cli(trios, bert_votes, tmp_path, capsys):
    """`gradfix run` with min_margin (weak votes become ties), no_evidence: scale and the margin-weighted mask,
    each checked against its formula on the word embeddings (which have rows without evidence)."""
    from gradfix_hf.cli import main

    trio = trios("bert")
    votes = VotesFile.load(bert_votes)
    name = "bert.embeddings.word_embeddings.weight"
    v, evidence = votes.votes[name], votes.has_evidence(name)
    target, finetuned, source = _weights(trio["target"]), _weights(trio["source_finetuned"]), _weights(trio["source"])
    tau = finetuned[name] - source[_strip(name)]
    agree = torch.sign(tau) * torch.sign(v.float()) > 0
    n = votes.n_samples
    cases = {
        "margin": ({"min_margin": 0.5}, torch.where(agree & (v.abs() >= -(-n // 2)), tau, 0.0)),
        "scale": ({"no_evidence": "scale", "no_evidence_scale": 0.25},
                  torch.where(~evidence & (tau != 0), 0.25 * tau, torch.where(agree, tau, 0.0))),
        "weighted": ({"mask": "margin"}, torch.where(agree, tau * v.abs().float() / n, 0.0)),
    }
    for case, (method, masked) in cases.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(recipe_dict("bert", trio, method={"alpha": 1.0, **method})))
        assert main(["run", str(path), "--votes", str(bert_votes), "-o", str(tmp_path / case), "--no-progress"]) == 0
        out = _weights(tmp_path / case)[name]
        assert torch.allclose(out, target[_strip(name)] + masked, atol=1e-6), case
        report = json.loads((tmp_path / case / "gradfix_report.json").read_text())
        assert all(report["method"][k] == value for k, value in method.items()), case
    strict = _weights(tmp_path / "margin")[name] - target[_strip(name)]
    plain = torch.where(agree, tau, 0.0)
    assert int((strict != 0).sum()) < int((plain != 0).sum())  # the threshold removed some weak votes
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe_dict("bert", trio, method={"mask": "oracle", "min_margin": 0.5})))
    assert main(["run", str(bad), "-o", str(tmp_path / "never")]) == 2
    assert "min_margin: vote margins need integer majority votes" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_evaluation_table_and_save_pretrained(trios, bert_votes, tmp_path):
    trio = trios("bert")
    result = transport(recipe_dict("bert", trio, evaluation={"path": str(trio["test"])}), tmp_path / "out",
                       votes=bert_votes, progress=False)
    rows = result.evaluation["rows"]
    assert [r["method"] for r in rows] == ["zero-shot", "few-shot", "naive", "gradfix"]
    assert result.evaluation["n_samples"] == 20
    assert all(0.0 <= r["score"] <= 1.0 and (r["score"] * 20).is_integer() for r in rows)
    assert "| GradFix (gradfix) |" in (result.output_dir / "README.md").read_text()
    copy = result.save_pretrained(tmp_path / "copy")
    assert (copy / "gradfix_report.json").read_text() == (result.output_dir / "gradfix_report.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(copy)
    enc = result.tokenizer(["good"], return_tensors="pt")
    assert torch.equal(reloaded(**enc).logits, result.model(**enc).logits)


def test_drift_report_matches_the_checkpoints(trios, bert_votes, tmp_path):
    """Per layer group: ‖θ_B − θ_A‖/‖θ_A‖, sign agreement of τ_A with the vote and kept fraction, recomputed here
    from the checkpoints and the votes file; the card and `gradfix inspect` show the table."""
    from gradfix_hf.cli import main
    from gradfix_hf.merge.drift import layer_group

    trio = trios("bert")
    result = transport(recipe_dict("bert", trio), tmp_path / "out", votes=bert_votes, progress=False)
    drift = result.report["drift"]
    source, target = _weights(trio["source"]), _weights(trio["target"])
    finetuned = _weights(trio["source_finetuned"])
    votes = VotesFile.load(bert_votes)
    sums: dict = {}
    for name, v in votes.votes.items():
        a, b = source[_strip(name)].double(), target[_strip(name)].double()
        tau = finetuned[name] - source[_strip(name)]
        product = torch.sign(tau) * torch.sign(v)
        g = sums.setdefault(layer_group(name), [0.0, 0.0, 0, 0])
        g[0] += float(((b - a) ** 2).sum())
        g[1] += float((a ** 2).sum())
        g[2] += int((product > 0).sum())
        g[3] += int((product != 0).sum())
    assert set(drift["groups"]) == set(sums)
    assert "bert.encoder.layer.0" in sums and "bert.embeddings.word_embeddings" in sums
    for group, (diff_sq, source_sq, agree, decided) in sums.items():
        entry = drift["groups"][group]
        assert entry["relative_distance"][0] == pytest.approx((diff_sq / source_sq) ** 0.5, rel=1e-5), group
        # a group can have no coordinate where both τ_A and the vote have a sign (e.g. an untouched embedding)
        assert entry["sign_agreement"][0] == (pytest.approx(agree / decided) if decided else None), group
    total = drift["total"]
    assert total["kept_fraction"] == pytest.approx(result.report["totals"]["kept_fraction"])
    assert 0 < total["sign_agreement"][0] < 1 and total["relative_distance"][0] > 0
    card = (result.output_dir / "README.md").read_text()
    assert "sign agreement of τ_A" in card and "`bert.encoder.layer.0`" in card
    assert main(["inspect", str(result.output_dir)]) == 0


def test_drift_report_of_naive_addition_has_no_sign_agreement(trios, tmp_path):
    trio = trios("bert")
    result = transport(recipe_dict("bert", trio, method={"mask": "naive"}), tmp_path / "out", progress=False)
    total = result.report["drift"]["total"]
    assert total["sign_agreement"] == [None] and total["relative_distance"][0] > 0
    assert "| – |" in (result.output_dir / "README.md").read_text()
