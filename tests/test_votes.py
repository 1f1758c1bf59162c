"""Stage 1: the vote engine against an independent per-sample loop, on real tiny BERT/T5/GPT-2 models.

The hand loop below takes a fresh θ_B, makes every parameter trainable, runs ``loss.backward()`` one
sample at a time and folds the ``.grad`` signs itself; the engine's integer votes and evidence must match
it coordinate for coordinate. The fresh θ_B comes from ``load_base_model`` (its weights are checked equal
to θ_B loaded directly with transformers): a copy loaded by ``from_pretrained`` sits at other memory
addresses, so BLAS may round differently, and a few gradients that are exactly zero in exact arithmetic
(attention key biases: softmax ignores a shift shared by all keys) are ~1e-14 noise whose sign then flips.
"""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import recipe_dict
from gradfix_hf import Recipe
from gradfix_hf.cli import main
from gradfix_hf.plan import TARGET
from gradfix_hf.errors import DataError, NonFiniteError
from gradfix_hf.plan import load_base_model
from gradfix_hf.transport import compute_recipe_votes, prepare
from gradfix_hf.votes import VotesFile, compute_votes, params_fingerprint
from gradfix_hf.version import __version__

KINDS = ("bert", "t5", "gpt2")
SAMPLES_PER_CLASS = {"bert": 3, "t5": 2, "gpt2": 2}
WORD_EMB = "bert.embeddings.word_embeddings.weight"


# --------------------------------------------------------------------------- the independent hand loop

def hand_target_model(kind, trio):
    """θ_B as the task model, loaded directly with transformers; a new classification head from θ_A^ft."""
    if kind == "bert":
        model = AutoModelForSequenceClassification.from_pretrained(str(trio["target"]), num_labels=2)
        head = load_file(str(trio["source_finetuned"] / "model.safetensors"))
        with torch.no_grad():
            model.classifier.weight.copy_(head["classifier.weight"])
            model.classifier.bias.copy_(head["classifier.bias"])
    elif kind == "t5":
        model = AutoModelForSeq2SeqLM.from_pretrained(str(trio["target"]))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(trio["target"]))
    return model.float().eval()


NOISE = 2.0 ** -20  # the documented rule: |g| ≤ 2^-20 · max|g| of that sample's tensor is rounding noise → 0


def denoise(grad):
    return torch.where(grad.abs() <= NOISE * grad.abs().max(), torch.zeros_like(grad), grad)


def test_noise_rule_is_the_documented_one():
    from gradfix_hf.votes import NOISE_FLOOR

    assert NOISE_FLOOR == NOISE


def hand_gradients(model, loss_of, items, names):
    """Per-sample gradients of every named parameter (zeros where the graph does not reach it), with the
    documented noise rule applied (see :func:`denoise`)."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    per_sample = []
    for item in items:
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, item)
        assert loss.dim() == 0
        loss.backward()
        per_sample.append({n: torch.zeros_like(params[n]) if params[n].grad is None
                           else denoise(params[n].grad.detach().clone()) for n in names})
    model.zero_grad(set_to_none=True)
    return per_sample


def hand_majority(grads, names):
    return {n: sum(-torch.sign(g[n]).to(torch.int64) for g in grads) for n in names}


def hand_mean(grads, names):
    out = {}
    for n in names:
        total = torch.zeros_like(grads[0][n])
        for g in grads:
            total += g[n]
        out[n] = torch.sign(-total).to(torch.int64)
    return out


def hand_evidence(grads, names):
    return {n: torch.stack([g[n] != 0 for g in grads]).any(0) for n in names}


def builtin_loss(model, example):
    return model(**example).loss


def _recipe(kind, trio, **overrides):
    """These tests pin the exact one-sample engine (tests/test_batched_engine.py covers the batched one)."""
    data = {"samples_per_class": SAMPLES_PER_CLASS[kind], **overrides.pop("data", {})}
    overrides.setdefault("vote_engine", "reference")
    return Recipe.from_dict(recipe_dict(kind, trio, data=data, **overrides))


@pytest.fixture(scope="module")
def computed(trios):
    """Per kind (lazily): the prepared run, the engine's votes and the hand loop's per-sample gradients."""
    cache = {}

    def get(kind):
        if kind not in cache:
            trio = trios(kind)
            prepared = prepare(_recipe(kind, trio))
            votes = compute_recipe_votes(prepared, progress=False)
            names = list(prepared.plan.transported)
            grads = hand_gradients(load_base_model(prepared.plan), builtin_loss, prepared.examples, names)
            cache[kind] = (prepared, votes, grads)
        return cache[kind]

    return get


# --------------------------------------------------------------------------- 1. majority votes

@pytest.mark.parametrize("kind", KINDS)
def test_majority_votes_equal_hand_loop(kind, computed, trios, tmp_path):
    prepared, vf, grads = computed(kind)
    names = list(prepared.plan.transported)
    n = len(prepared.examples)
    assert n == 2 * SAMPLES_PER_CLASS[kind] == vf.n_samples
    assert set(vf.votes) == set(names)
    # the model the hand loop differentiates is θ_B (with θ_A^ft's new head), as transformers loads it
    independent = hand_target_model(kind, trios(kind)).state_dict()
    fresh = load_base_model(prepared.plan).state_dict()
    assert set(fresh) == set(independent)
    assert all(torch.equal(fresh[k], independent[k]) for k in fresh)
    all_params = {name for name, _ in load_base_model(prepared.plan).named_parameters()}
    # every parameter of θ_B is voted; the new classification head (from θ_A^ft) is not
    assert all_params - set(names) == ({"classifier.weight", "classifier.bias"} if kind == "bert" else set())

    expected = hand_majority(grads, names)
    evidence = hand_evidence(grads, names)
    for name in names:
        v = vf.votes[name]
        assert v.dtype == torch.int8, name
        assert v.shape == expected[name].shape, name
        assert torch.equal(v.to(torch.int64), expected[name]), name
        assert torch.equal(vf.has_evidence(name), evidence[name]), name
    # the engine records a mask exactly for the tensors where some coordinate got no gradient
    assert set(vf.evidence) == {name for name in names if not bool(evidence[name].all())}

    # the comparison is not vacuous: real disagreement between samples, unanimous coordinates, ties
    flat = torch.cat([expected[name].flatten() for name in names])
    assert int(flat.abs().max()) == n
    assert bool(((flat.abs() < n) & (flat != 0)).any())
    assert bool((flat > 0).any()) and bool((flat < 0).any())

    # and the file keeps all of it
    path = vf.save(tmp_path / "votes.safetensors")
    loaded = VotesFile.load(path)
    for name in names:
        assert loaded.votes[name].dtype == torch.int8
        assert torch.equal(loaded.votes[name], vf.votes[name]), name
        assert torch.equal(loaded.has_evidence(name), evidence[name]), name


def test_bert_absent_tokens_have_no_evidence_and_are_saved_as_rows(computed, tmp_path):
    prepared, vf, _ = computed("bert")
    used = torch.unique(torch.cat([ex["input_ids"].flatten() for ex in prepared.examples]))
    vocab = vf.votes[WORD_EMB].shape[0]
    present = torch.isin(torch.arange(vocab), used)
    assert 0 < int(present.sum()) < vocab  # the samples use some tokens, not all
    ev = vf.has_evidence(WORD_EMB)
    assert torch.equal(ev, present[:, None].expand_as(ev))  # evidence exactly on the rows of used tokens
    assert bool((vf.votes[WORD_EMB][~present] == 0).all())
    # token type 1 is never used by single-sentence inputs
    assert torch.equal(vf.has_evidence("bert.embeddings.token_type_embeddings.weight").any(1),
                       torch.tensor([True, False]))

    path = vf.save(tmp_path / "votes.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        rows = handle.get_tensor("evidence_rows/" + WORD_EMB)
    assert "evidence_rows/" + WORD_EMB in keys and "evidence_bits/" + WORD_EMB not in keys
    assert rows.shape == (vocab,)
    assert torch.equal(rows.bool(), present)
    # tensors with full evidence store no mask at all
    assert "evidence_rows/bert.pooler.dense.weight" not in keys
    assert "evidence_bits/bert.pooler.dense.weight" not in keys


# --------------------------------------------------------------------------- 2. mean aggregation

@pytest.fixture(scope="module")
def bert_mean_votes(trios):
    prepared = prepare(_recipe("bert", trios("bert"), method={"mask": "mean"}))
    return prepared, compute_recipe_votes(prepared, progress=False)


def test_mean_aggregation_equals_sign_of_summed_gradient(computed, bert_mean_votes):
    prepared, _, grads = computed("bert")
    mean_prepared, vf = bert_mean_votes
    assert [ex["input_ids"].tolist() for ex in mean_prepared.examples] == \
        [ex["input_ids"].tolist() for ex in prepared.examples]  # same samples as the hand loop
    assert vf.metadata["aggregation"] == "mean"
    names = list(prepared.plan.transported)
    expected = hand_mean(grads, names)
    majority = hand_majority(grads, names)
    evidence = hand_evidence(grads, names)
    for name in names:
        assert vf.votes[name].dtype == torch.int8
        assert torch.equal(vf.votes[name].to(torch.int64), expected[name]), name
        assert torch.equal(vf.has_evidence(name), evidence[name]), name
    # mean is not majority in disguise: somewhere the summed gradient disagrees with the vote count
    assert any(not torch.equal(expected[n], torch.sign(majority[n])) for n in names)


# --------------------------------------------------------------------------- 3. a user-supplied loss

def _callable_loss(model, tokenizer, row):
    enc = tokenizer(row["text"], return_tensors="pt")
    logits = model(**enc).logits
    target = torch.tensor([int(row["label"])])
    return F.cross_entropy(logits, target) + 0.25 * logits.pow(2).mean()


def _callable_recipe(trio, loss_fn):
    d = recipe_dict("bert", trio, objective="callable", model_class="AutoModelForSequenceClassification",
                    data={"samples_per_class": 2})
    return Recipe.from_dict(d, loss_fn=loss_fn)


def test_callable_objective_votes_equal_hand_loop(trios):
    trio = trios("bert")
    prepared = prepare(_callable_recipe(trio, _callable_loss))
    vf = compute_recipe_votes(prepared, progress=False)
    rows = prepared.samples.rows
    assert len(rows) == 4 and vf.n_samples == 4 and vf.metadata["objective"] == "callable"
    names = list(prepared.plan.transported)
    assert WORD_EMB in names and "classifier.weight" not in names
    tokenizer = AutoTokenizer.from_pretrained(str(trio["target"]))
    grads = hand_gradients(load_base_model(prepared.plan), lambda m, row: _callable_loss(m, tokenizer, row),
                           rows, names)
    expected, evidence = hand_majority(grads, names), hand_evidence(grads, names)
    for name in names:
        assert vf.votes[name].dtype == torch.int8
        assert torch.equal(vf.votes[name].to(torch.int64), expected[name]), name
        assert torch.equal(vf.has_evidence(name), evidence[name]), name
    assert int(torch.cat([e.flatten() for e in expected.values()]).abs().max()) == 4


@pytest.mark.parametrize("bad", ["logits", "float", "vector"])
def test_callable_objective_non_scalar_loss_is_refused(trios, bad):
    def loss_fn(model, tokenizer, row):
        logits = model(**tokenizer(row["text"], return_tensors="pt")).logits
        if bad == "logits":
            return logits  # shape (1, 2)
        if bad == "float":
            return float(logits.detach().sum())
        return logits.sum(0)  # shape (2,)

    prepared = prepare(_callable_recipe(trios("bert"), loss_fn))
    with pytest.raises(DataError, match=r"loss_fn: must return a scalar tensor"):
        compute_recipe_votes(prepared, progress=False)


# --------------------------------------------------------------------------- 4. N > 127: int16

def _linear_problem(n_samples, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(5, 3)
    examples = []
    for _ in range(n_samples):
        x = torch.randn(1, 5)
        x[0, 0] = 0.0  # feature 0 is never active: its weight column gets no evidence
        x[0, 1] = x[0, 1].abs() + 0.1  # feature 1 always positive: unanimous votes
        examples.append({"x": x, "y": torch.full((1, 3), 100.0)})
    return model, examples


def _linear_loss(model, example):
    return (model(example["x"]) - example["y"]).pow(2).mean()


@pytest.mark.parametrize("aggregation", ["majority", "mean"])
def test_more_than_127_samples_give_int16_votes(aggregation):
    model, examples = _linear_problem(130)
    names = ["weight", "bias"]
    votes, evidence = compute_votes(model, _linear_loss, examples, names, aggregation=aggregation, progress=False)
    reference, _ = _linear_problem(130)
    grads = hand_gradients(reference, _linear_loss, examples, names)
    expected = hand_majority(grads, names) if aggregation == "majority" else hand_mean(grads, names)
    for name in names:
        assert votes[name].dtype == torch.int16, name
        assert torch.equal(votes[name].to(torch.int64), expected[name]), name
    if aggregation == "majority":
        assert torch.equal(votes["bias"], torch.full((3,), 130, dtype=torch.int16))  # would wrap in int8
        assert bool((votes["weight"][:, 1] == 130).all())
        assert bool((votes["weight"][:, 2:].abs() < 130).all())
    assert set(evidence) == {"weight"}
    expected_ev = torch.ones(3, 5, dtype=torch.bool)
    expected_ev[:, 0] = False
    assert torch.equal(evidence["weight"], expected_ev)
    assert torch.equal(evidence["weight"], hand_evidence(grads, names)["weight"])
    assert bool((votes["weight"][:, 0] == 0).all())


def test_vote_dtype_boundary():
    for n, dtype in ((127, torch.int8), (128, torch.int16)):
        model, examples = _linear_problem(n)
        votes, _ = compute_votes(model, _linear_loss, examples, ["bias"], progress=False)
        assert votes["bias"].dtype == dtype and int(votes["bias"][0]) == n


def test_compute_votes_refusals():
    model, examples = _linear_problem(3)
    with pytest.raises(ValueError, match="aggregation"):
        compute_votes(model, _linear_loss, examples, ["bias"], aggregation="median", progress=False)
    with pytest.raises(KeyError, match="not_a_param"):
        compute_votes(model, _linear_loss, examples, ["bias", "not_a_param"], progress=False)
    with pytest.raises(DataError, match=r"sample 0: the loss must be a scalar tensor, got shape \[1, 3\]"):
        compute_votes(model, lambda m, ex: m(ex["x"]), examples, ["bias"], progress=False)
    with pytest.raises(DataError, match=r"sample 0: the loss must be a scalar tensor, got float"):
        compute_votes(model, lambda m, ex: 1.0, examples, ["bias"], progress=False)
    examples[1]["y"] = torch.full((1, 3), float("nan"))
    with pytest.raises(NonFiniteError, match="sample 1"):
        compute_votes(model, _linear_loss, examples, ["bias"], progress=False)


# --------------------------------------------------------------------------- 5. the votes file

def test_votes_file_metadata_round_trip(computed, tmp_path):
    prepared, vf, _ = computed("bert")
    meta = vf.metadata
    assert meta["format"] == "gradfix-votes" and meta["aggregation"] == "majority"
    assert meta["n_samples"] == str(len(prepared.examples)) == "6"
    assert meta["objective"] == "sequence-classification"
    assert meta["target"] == prepared.models[TARGET].name
    assert str(prepared.recipe.models.target.path) in meta["target"]
    assert meta["target_revision"] == ""  # a local folder has no commit
    assert meta["data_fingerprint"] == prepared.samples.fingerprint and len(meta["data_fingerprint"]) >= 8
    assert meta["library_version"] == __version__
    shapes = {n: tuple(vf.votes[n].shape) for n in prepared.plan.transported}
    assert meta["params_fingerprint"] == params_fingerprint(shapes)
    path = vf.save(tmp_path / "sub" / "votes.safetensors")
    loaded = VotesFile.load(path)
    assert loaded.metadata == meta
    assert loaded.n_samples == 6
    assert set(loaded.votes) == set(vf.votes) and set(loaded.evidence) == set(vf.evidence)


def test_params_fingerprint_depends_on_names_and_shapes():
    base = params_fingerprint({"a": (2, 3), "b": (4,)})
    assert base == params_fingerprint({"b": (4,), "a": (2, 3)})
    assert base != params_fingerprint({"a": (3, 2), "b": (4,)})
    assert base != params_fingerprint({"a": (2, 3), "c": (4,)})


def _synthetic():
    torch.manual_seed(0)
    votes = {"rows2d": torch.randint(-5, 6, (6, 4), dtype=torch.int8),
             "bits2d": torch.randint(-5, 6, (4, 7), dtype=torch.int8),
             "bits1d": torch.randint(-5, 6, (13,), dtype=torch.int8),
             "rows3d": torch.randint(-5, 6, (3, 2, 5), dtype=torch.int8),
             "full": torch.randint(-5, 6, (2, 2), dtype=torch.int8)}
    rows = torch.tensor([1, 0, 0, 1, 1, 0], dtype=torch.bool)[:, None].expand(6, 4).clone()
    bits2d = torch.rand(4, 7) > 0.5
    bits2d[0, :] = True
    bits2d[1, 0] = False  # not constant along rows
    bits1d = torch.rand(13) > 0.5
    bits1d[-1] = True  # the last coordinate sits in the padded byte
    rows3d = torch.tensor([True, False, True])[:, None, None].expand(3, 2, 5).clone()
    evidence = {"rows2d": rows, "bits2d": bits2d, "bits1d": bits1d, "rows3d": rows3d}
    metadata = {"format": "gradfix-votes", "format_version": "1", "n_samples": "5", "aggregation": "majority",
                "objective": "seq2seq", "target": "org/target", "target_revision": "a" * 40,
                "data_source": "x.jsonl", "data_fingerprint": "0123456789abcdef",
                "params_fingerprint": params_fingerprint({k: tuple(v.shape) for k, v in votes.items()}),
                "library_version": __version__}
    return VotesFile(votes=votes, metadata=metadata, evidence=evidence)


def test_votes_file_round_trip_rows_and_bits(tmp_path):
    vf = _synthetic()
    path = vf.save(tmp_path / "votes.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert {"evidence_rows/rows2d", "evidence_rows/rows3d", "evidence_bits/bits2d", "evidence_bits/bits1d"} <= keys
    assert not any(k.endswith("/full") for k in keys)
    loaded = VotesFile.load(path)
    assert loaded.metadata == vf.metadata
    assert set(loaded.votes) == set(vf.votes) and set(loaded.evidence) == set(vf.evidence)
    for name, v in vf.votes.items():
        assert loaded.votes[name].dtype == v.dtype and torch.equal(loaded.votes[name], v), name
        assert torch.equal(loaded.has_evidence(name), vf.has_evidence(name)), name
    assert bool(loaded.has_evidence("full").all())
    loaded.check_target({k: tuple(v.shape) for k, v in vf.votes.items()}, target="org/target",
                        commit_hash="a" * 40)


def test_votes_file_int16_round_trip(tmp_path):
    vf = _synthetic()
    vf.votes = {k: (v.to(torch.int16) * 60) for k, v in vf.votes.items()}
    vf.metadata["n_samples"] = "300"
    loaded = VotesFile.load(vf.save(tmp_path / "v.safetensors"))
    for name, v in vf.votes.items():
        assert loaded.votes[name].dtype == torch.int16 and torch.equal(loaded.votes[name], v)
    assert int(loaded.votes["full"].abs().max()) > 127


def test_save_is_atomic(tmp_path):
    folder = tmp_path / "votes"
    vf = _synthetic()
    path = vf.save(folder / "votes.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["votes.safetensors"]
    before = path.read_bytes()
    # a save that fails half-way leaves the previous file intact and no temporary file behind
    broken = VotesFile(votes=vf.votes, metadata={**vf.metadata, "n_samples": 5}, evidence=vf.evidence)
    with pytest.raises(TypeError, match="metadata must map strings to strings"):
        broken.save(path, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["votes.safetensors"]
    assert path.read_bytes() == before
    # a new file is moved into place: a reader holding the old file still reads it whole
    inode = path.stat().st_ino
    with open(path, "rb") as reader:
        vf.metadata["data_source"] = "y.jsonl"
        vf.save(path, overwrite=True)
        assert reader.read() == before
    assert path.stat().st_ino != inode
    assert sorted(p.name for p in folder.iterdir()) == ["votes.safetensors"]
    assert VotesFile.load(path).metadata["data_source"] == "y.jsonl"


# --------------------------------------------------------------------------- 6. refusals

def _copy(vf):
    return VotesFile(votes=dict(vf.votes), metadata=dict(vf.metadata), evidence=dict(vf.evidence))


def _refused(prepared, path, *reasons):
    from gradfix_hf.errors import VotesFileError
    from gradfix_hf.transport import load_votes_for

    with pytest.raises(VotesFileError) as info:
        load_votes_for(prepared, path)
    message = str(info.value)
    assert str(path) in message, message
    for reason in reasons:
        assert reason in message, message
    return message


def test_bert_votes_load_for_their_own_run(computed, tmp_path):
    from gradfix_hf.transport import load_votes_for

    prepared, vf, _ = computed("bert")
    path = vf.save(tmp_path / "votes.safetensors")
    loaded = load_votes_for(prepared, path)
    assert all(torch.equal(loaded.votes[n], vf.votes[n]) for n in vf.votes)


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_refuses_votes_for_another_parameter_set(computed, tmp_path, change):
    prepared, vf, _ = computed("bert")
    other = _copy(vf)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    if change == "drop":
        del other.votes[name]
        reasons = ("another parameter set", "missing votes for", name)
    elif change == "extra":
        other.votes["bert.encoder.layer.9.output.dense.weight"] = torch.zeros(3, 3, dtype=torch.int8)
        reasons = ("another parameter set", "not in the target", "layer.9")
    else:
        other.votes[name] = torch.zeros(16, 32, dtype=torch.int8)
        reasons = (name, "[16, 32]", "[32, 32]")
    path = other.save(tmp_path / "votes.safetensors")
    _refused(prepared, path, *reasons)


def test_refuses_votes_for_another_revision(computed):
    from gradfix_hf.errors import VotesFileError

    prepared, vf, _ = computed("bert")
    shapes = prepared.voted_shapes
    other = _copy(vf)
    other.metadata["target_revision"] = "a" * 40
    with pytest.raises(VotesFileError, match=r"votes\.safetensors.*a{40}.*org/model.*b{40}"):
        other.check_target(shapes, target="org/model", commit_hash="b" * 40, source="votes.safetensors")
    other.check_target(shapes, target="org/model", commit_hash="a" * 40)  # the same revision is accepted
    other.check_target(shapes, target="org/model", commit_hash=None)  # a local target has no commit to compare


def test_refuses_truncated_and_random_files(computed, tmp_path):
    prepared, vf, _ = computed("bert")
    good = vf.save(tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    _refused(prepared, truncated, "corrupt or truncated")
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    _refused(prepared, noise, "corrupt or truncated")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _refused(prepared, empty, "corrupt or truncated")
    _refused(prepared, tmp_path / "absent.safetensors", "not found")


def test_refuses_safetensors_without_gradfix_metadata(computed, tmp_path):
    from safetensors.torch import save_file

    prepared, vf, _ = computed("bert")
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in vf.votes.items()}, str(plain))
    _refused(prepared, plain, "not a gradfix votes file")
    partial = tmp_path / "partial.safetensors"
    meta = {k: v for k, v in vf.metadata.items() if k != "n_samples"}
    save_file({k: v.contiguous() for k, v in vf.votes.items()}, str(partial), metadata=meta)
    _refused(prepared, partial, "not a gradfix votes file", "n_samples")


def test_refuses_aggregation_mismatch(computed, bert_mean_votes, tmp_path):
    from gradfix_hf.transport import load_votes_for

    prepared, vf, _ = computed("bert")
    mean_prepared, mean_vf = bert_mean_votes
    mean_path = mean_vf.save(tmp_path / "mean.safetensors")
    majority_path = vf.save(tmp_path / "majority.safetensors")
    _refused(prepared, mean_path, "'mean'", "'gradfix'", "'majority'")
    _refused(mean_prepared, majority_path, "'majority'", "'mean'")
    assert load_votes_for(mean_prepared, mean_path).metadata["aggregation"] == "mean"


@pytest.mark.parametrize("value", [7, -7, 127, -128])
def test_refuses_votes_larger_than_n(computed, tmp_path, value):
    prepared, vf, _ = computed("bert")
    other = _copy(vf)
    name = "bert.pooler.dense.bias"
    corrupt = other.votes[name].clone()
    corrupt[3] = value
    other.votes[name] = corrupt
    path = other.save(tmp_path / "votes.safetensors")
    _refused(prepared, path, name, "|vote| > 6", "N=6")


def test_refuses_mean_votes_beyond_one(bert_mean_votes, tmp_path):
    mean_prepared, mean_vf = bert_mean_votes
    other = _copy(mean_vf)
    name = "bert.pooler.dense.bias"
    corrupt = other.votes[name].clone()
    corrupt[0] = 2
    other.votes[name] = corrupt
    _refused(mean_prepared, other.save(tmp_path / "votes.safetensors"), name, "|vote| > 1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool])
def test_refuses_votes_that_are_not_signed_integers(computed, tmp_path, dtype):
    prepared, vf, _ = computed("bert")
    other = _copy(vf)
    other.votes["bert.pooler.dense.bias"] = other.votes["bert.pooler.dense.bias"].abs().to(dtype)
    _refused(prepared, other.save(tmp_path / "votes.safetensors"), "must be signed integers",
             "bert.pooler.dense.bias", str(dtype))


def test_refuses_inconsistent_evidence(computed, tmp_path):
    from safetensors.torch import save_file

    prepared, vf, _ = computed("bert")
    tensors = {k: v.contiguous() for k, v in vf.votes.items()}
    # evidence for a tensor that has no votes
    dangling = tmp_path / "dangling.safetensors"
    save_file({**tensors, "evidence_rows/bert.no.such.weight": torch.ones(3, dtype=torch.uint8)}, str(dangling),
              metadata=vf.metadata)
    _refused(prepared, dangling, "evidence", "bert.no.such.weight")
    # evidence rows that do not match the tensor's first dimension
    short = tmp_path / "short.safetensors"
    save_file({**tensors, "evidence_rows/" + WORD_EMB: torch.ones(5, dtype=torch.uint8)}, str(short),
              metadata=vf.metadata)
    _refused(prepared, short, "evidence", WORD_EMB)
    # packed bits too short for the tensor
    bits = tmp_path / "bits.safetensors"
    save_file({**tensors, "evidence_bits/" + WORD_EMB: torch.ones(2, dtype=torch.uint8)}, str(bits),
              metadata=vf.metadata)
    _refused(prepared, bits, "evidence", WORD_EMB)
    # packed bits stored as another dtype
    wide = tmp_path / "wide.safetensors"
    save_file({**tensors, "evidence_bits/" + WORD_EMB: torch.ones(vf.votes[WORD_EMB].numel())}, str(wide),
              metadata=vf.metadata)
    _refused(prepared, wide, "evidence", WORD_EMB, "float32")


@pytest.mark.parametrize("field,value", [("n_samples", "six"), ("n_samples", "0"), ("aggregation", "median")])
def test_refuses_corrupt_metadata(computed, tmp_path, field, value):
    prepared, vf, _ = computed("bert")
    other = _copy(vf)
    other.metadata[field] = value
    _refused(prepared, other.save(tmp_path / "votes.safetensors"), field, value)


# --------------------------------------------------------------------------- 7. the command line

def test_cli_votes_run_and_inspect(trios, tmp_path, capsys):
    trio = trios("bert")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe_dict("bert", trio, data={"samples_per_class": 2})))
    votes_path = tmp_path / "votes.safetensors"

    assert main(["votes", str(recipe_path), "-o", str(votes_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {votes_path}" in printed and "N=4" in printed
    vf = VotesFile.load(votes_path)
    assert vf.n_samples == 4 and vf.metadata["target"] == str(trio["target"])
    assert len(vf.votes) == 39 and all(v.dtype == torch.int8 for v in vf.votes.values())
    before = votes_path.read_bytes()

    assert main(["votes", str(recipe_path), "-o", str(votes_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(votes_path) in err and "--overwrite" in err
    assert votes_path.read_bytes() == before
    assert main(["votes", str(recipe_path), "-o", str(votes_path), "--no-progress", "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "votes.safetensors"]

    # run with the votes file == run computing the votes itself
    reused, computed_out = tmp_path / "reused", tmp_path / "computed"
    assert main(["run", str(recipe_path), "-o", str(reused), "--votes", str(votes_path), "--no-progress"]) == 0
    assert main(["run", str(recipe_path), "-o", str(computed_out), "--no-progress"]) == 0
    capsys.readouterr()
    report = json.loads((reused / "gradfix_report.json").read_text())
    assert report["votes"]["file"] == str(votes_path)
    assert report["votes"]["n_samples"] == 4 and report["votes"]["aggregation"] == "majority"
    assert json.loads((computed_out / "gradfix_report.json").read_text())["votes"]["file"] is None
    a, b = load_file(str(reused / "model.safetensors")), load_file(str(computed_out / "model.safetensors"))
    assert set(a) == set(b) and len(a) == 41
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the file is really what the run used: negated votes give another model
    negated = VotesFile(votes={k: -v for k, v in vf.votes.items()}, metadata=vf.metadata, evidence=vf.evidence)
    negated_path = negated.save(tmp_path / "negated.safetensors")
    other = tmp_path / "negated-out"
    assert main(["run", str(recipe_path), "-o", str(other), "--votes", str(negated_path), "--no-progress"]) == 0
    capsys.readouterr()
    c = load_file(str(other / "model.safetensors"))
    assert not torch.equal(c["bert.encoder.layer.0.attention.self.query.weight"],
                           a["bert.encoder.layer.0.attention.self.query.weight"])

    # inspect
    assert main(["inspect", str(votes_path)]) == 0
    text = capsys.readouterr().out
    assert f"votes file {votes_path}" in text
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:] if line.strip()}
    assert lines["n_samples"] == ["4"]
    assert lines["target"] == [str(trio["target"])]
    assert lines["aggregation"] == ["majority"]
    assert main(["inspect", str(votes_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "votes" and summary["metadata"] == vf.metadata
    assert summary["tensors"] == 39 and summary["dtype"] == "torch.int8"
    assert summary["coordinates"] == sum(v.numel() for v in vf.votes.values())
    overall = summary["overall"]
    assert abs(sum(overall.values()) - 1.0) < 1e-9 and overall["no_evidence"] > 0
    assert WORD_EMB in summary["most_no_evidence"]


def test_cli_votes_reports_bad_recipe_and_inspect_bad_file(tmp_path, capsys):
    bad = tmp_path / "notvotes.safetensors"
    bad.write_bytes(b"\x00" * 100)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "corrupt or truncated" in err
    assert main(["votes", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "v.safetensors")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize("dtype,n", [(torch.int8, 127), (torch.int16, 300)])
def test_vote_statistics_equal_direct_counts(dtype, n):
    """The one-pass int8 histogram and the int16 path give the shares counted directly."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randint(-n, n + 1, (37, 53), generator=generator).to(dtype)
    v[0, :5] = torch.tensor([n, -n, 0, 1, -1], dtype=dtype)
    evidence = torch.ones(v.shape, dtype=torch.bool)
    evidence[3] = False
    v[3] = 0
    stats = VotesFile({"w": v}, {"n_samples": str(n)}, {"w": evidence}).statistics("w")
    wide = v.long()
    numel = v.numel()
    assert stats["positive"] == int((wide > 0).sum()) / numel
    assert stats["negative"] == int((wide < 0).sum()) / numel
    assert stats["tie"] == int(((wide == 0) & evidence).sum()) / numel
    assert stats["no_evidence"] == 53 / numel
    assert stats["mean_abs_margin"] == pytest.approx(int(wide.abs().sum()) / numel / n, rel=1e-15)
