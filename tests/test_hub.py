"""Hub ids resolve through huggingface_hub's real cache, offline: a standard cache layout is built in tmp_path
(``models--org--name/{blobs,refs,snapshots}``) and ``snapshot_download`` reads it with HF_HUB_OFFLINE=1.
"""
import hashlib
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import recipe_dict
from gradfix_hf import Recipe, prepare, transport
from gradfix_hf.errors import ModelResolutionError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
TAGS = {"gradfix", "merge", "task-vector-transport"}


@pytest.fixture(scope="module")
def bert(trios):
    return trios("bert")


def _add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, Path], refs: tuple[str, ...] = ("main",)):
    """Store ``files`` ({path in repo: local file}) as blobs and symlink them from the commit's snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def _model_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, bert):
    """An offline HF cache holding org/tiny-bert (θ_B at the root and under ``variant/``)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time; snapshot_download reads the module attributes at call time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = {**_model_files(bert["target"]), **_model_files(bert["target"], "variant/")}
    snapshot = _add_snapshot(cache, "org/tiny-bert", COMMIT, files)
    assert (snapshot / "model.safetensors").is_symlink()
    return cache


def _recipe(bert, target, **overrides):
    base = recipe_dict("bert", bert)
    return recipe_dict("bert", bert, models={**base["models"], "target": target},
                       data={**base["data"], "samples_per_class": 2}, **overrides)


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
def test_hub_id_resolves_from_the_cache_offline(bert, hub_cache, revision):
    target = "org/tiny-bert" if revision is None else {"path": "org/tiny-bert", "revision": revision}
    prepared = prepare(Recipe.from_dict(_recipe(bert, target)))
    resolved = prepared.models["models.target"]
    assert resolved.repo_id == "org/tiny-bert" and resolved.commit_hash == COMMIT
    assert resolved.local_dir == hub_cache / "models--org--tiny-bert" / "snapshots" / COMMIT
    assert resolved.weight_format == "safetensors"
    described = resolved.describe()
    assert described["revision"] == revision and described["commit_hash"] == COMMIT
    # the cached θ_B is the same model as the local one: same plan
    local = prepare(Recipe.from_dict(_recipe(bert, str(bert["target"]))))
    assert prepared.plan.transported == local.plan.transported
    assert prepared.samples.fingerprint == local.samples.fingerprint


def test_hub_id_with_subfolder(bert, hub_cache):
    prepared = prepare(Recipe.from_dict(_recipe(bert, {"path": "org/tiny-bert", "subfolder": "variant"})))
    resolved = prepared.models["models.target"]
    assert resolved.local_dir == hub_cache / "models--org--tiny-bert" / "snapshots" / COMMIT / "variant"
    assert resolved.describe()["subfolder"] == "variant" and resolved.commit_hash == COMMIT
    with pytest.raises(ModelResolutionError) as info:
        prepare(Recipe.from_dict(_recipe(bert, {"path": "org/tiny-bert", "subfolder": "nope"})))
    message = str(info.value)
    assert "models.target" in message and "org/tiny-bert/nope" in message and "no config.json" in message


def test_run_records_repo_and_commit_and_the_card_names_the_base_model(bert, hub_cache, tmp_path):
    result = transport(_recipe(bert, {"path": "org/tiny-bert", "revision": "main"}), tmp_path / "out",
                       progress=False)
    target = result.report["models"]["models.target"]
    assert target["repo_id"] == "org/tiny-bert" and target["commit_hash"] == COMMIT
    assert target["revision"] == "main" and target["weights"] == "safetensors"
    assert result.report["models"]["models.source"]["repo_id"] is None  # local folders have no repo id
    card = (result.output_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/tiny-bert"
    assert front["base_model_relation"] == "merge"
    assert TAGS <= set(front["tags"])
    assert "`org/tiny-bert`" in card
    # the output is θ_B from the cache plus the masked τ_A: the head is the fine-tune's
    out = load_file(result.output_dir / "model.safetensors")
    finetuned = load_file(bert["source_finetuned"] / "model.safetensors")
    assert torch.equal(out["classifier.weight"], finetuned["classifier.weight"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_revision_pins_another_commit(bert, hub_cache):
    _add_snapshot(hub_cache, "org/tiny-bert", OTHER_COMMIT, _model_files(bert["target"]), refs=("v2",))
    resolved = prepare(Recipe.from_dict(_recipe(bert, {"path": "org/tiny-bert", "revision": "v2"}))).models
    assert resolved["models.target"].commit_hash == OTHER_COMMIT
    main = prepare(Recipe.from_dict(_recipe(bert, "org/tiny-bert"))).models
    assert main["models.target"].commit_hash == COMMIT


@pytest.mark.parametrize("target,expected", [
    ("org/unknown-model", "org/unknown-model"),
    ({"path": "org/tiny-bert", "revision": "no-such-branch"}, "org/tiny-bert@no-such-branch"),
])
def test_unknown_repo_or_revision_offline(bert, hub_cache, tmp_path, target, expected):
    raw = _recipe(bert, target)
    with pytest.raises(ModelResolutionError) as info:
        prepare(Recipe.from_dict(raw))
    message = str(info.value)
    assert "models.target" in message and expected in message
    assert "not in the local cache" in message and "Hub cannot be reached" in message
    with pytest.raises(ModelResolutionError):
        transport(raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_unknown_repo_for_another_role_names_that_role(bert, hub_cache):
    raw = _recipe(bert, str(bert["target"]))
    raw["models"]["source_finetuned"] = "org/missing-finetune"
    with pytest.raises(ModelResolutionError, match=r"models\.source_finetuned: org/missing-finetune"):
        prepare(Recipe.from_dict(raw))


def test_pickle_only_snapshot_needs_allow_pickle(bert, hub_cache, tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    torch.save(load_file(bert["target"] / "model.safetensors"), weights)
    files = {name: path for name, path in _model_files(bert["target"]).items() if name != "model.safetensors"}
    _add_snapshot(hub_cache, "org/pickled-bert", COMMIT, {**files, "pytorch_model.bin": weights})
    raw = _recipe(bert, "org/pickled-bert")
    with pytest.raises(ModelResolutionError) as info:
        prepare(Recipe.from_dict(raw))
    message = str(info.value)
    assert "models.target" in message and "pickle" in message and "allow_pickle: true" in message
    assert "models--org--pickled-bert" in message
    resolved = prepare(Recipe.from_dict({**raw, "allow_pickle": True})).models["models.target"]
    assert resolved.weight_format == "pickle" and resolved.repo_id == "org/pickled-bert"
    assert resolved.commit_hash == COMMIT

