"""Pulls and pushes against a real HTTP server on 127.0.0.1 that speaks the Hub's API (tests/hub_server.py).

The real ``huggingface_hub`` client runs unmodified: it is pointed at the server the way a user points it at a
mirror (HF_ENDPOINT). huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and the cache location once, at import,
so the in-process fixture sets those module constants (and the environment, for subprocesses). The server does
not implement Xet storage, so HF_HUB_DISABLE_XET=1 makes the client take the plain LFS upload path (hf_xet is
installed here; the client picks Xet only from that). The real Hub is never contacted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file

from conftest import recipe_dict
from hub_server import LocalHub, free_port_url
from gradfix_hf import GradFixError, ModelResolutionError, Recipe, VotesFileError, transport
from gradfix_hf.cli import main
from gradfix_hf.data import load_split
from gradfix_hf.errors import DataError
from gradfix_hf.hub import resolve_model
from gradfix_hf.recipe import ModelRef
from gradfix_hf.transport import TransportResult, compute_recipe_votes, prepare

GOOD = "hf_test_alice_write_0123456789"   # alice: write access to her namespace and to org
READ_ONLY = "hf_test_bob_read_0123456789"
BAD = "hf_test_not_a_valid_token_42"
TAGS = {"gradfix", "merge", "task-vector-transport"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub-server"), tokens={GOOD: ("alice", "write"), READ_ONLY: ("bob", "read")},
                  orgs={"org": {"alice"}}) as hub:
        yield hub


def _environment(url: str, cache: Path, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache), "HF_HOME": str(home),
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": GOOD}


def _point_client_at(monkeypatch, url: str, cache: Path, home: Path) -> None:
    """What HF_ENDPOINT & co. do at import time, for the already imported client (and the environment)."""
    for key, value in _environment(url, cache, home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))  # never this machine's login


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    """The server, with the client pointed at it, a fresh cache, online, token GOOD in HF_TOKEN."""
    _point_client_at(monkeypatch, server.url, tmp_path / "hf-cache", tmp_path / "hf-home")
    server.faults.clear()
    server.requests.clear()
    return server


@pytest.fixture(scope="module")
def bert(trios):
    return trios("bert")


@pytest.fixture(scope="module")
def seeded(server, bert, tmp_path_factory):
    """Model and data set repos on the server (seeded directly, not through the code under test)."""
    extra = tmp_path_factory.mktemp("extra")
    (extra / "pytorch_model.bin").write_bytes(b"pickle bytes that must never be downloaded")
    (extra / "modeling_custom.py").write_text("raise RuntimeError('remote code must not run')\n")
    files = {**_files(bert["target"]), **_files(bert["target"], "variant/"), **_files(bert["source"], "checkpoint-1/"),
             "pytorch_model.bin": extra / "pytorch_model.bin", "modeling_custom.py": extra / "modeling_custom.py"}
    v1 = server.seed("org/tiny-bert", files, tags=("v1",), message="θ_B v1")
    main = server.seed("org/tiny-bert", _files(bert["source"]), message="replace the weights on main")  # main ≠ v1
    finetuned = server.seed("org/tiny-bert-ft", bert["source_finetuned"])
    rows = [json.loads(line) for line in bert["train"].read_text().splitlines()]
    card = yaml.safe_dump({"configs": [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train.jsonl"},
                                                  {"split": "validation", "path": "data/test.jsonl"}]},
        {"config_name": "other", "data_files": "other/*.jsonl"}]})
    data_v1 = server.seed("org/toy-sentiment", {
        "README.md": f"---\n{card}---\n# toy sentiment\n".encode(),
        "data/train.jsonl": bert["train"].read_bytes(), "data/test.jsonl": bert["test"].read_bytes(),
        "other/big.jsonl": b"{}\n" * 1000}, repo_type="dataset", tags=("v1",))
    data_main = server.seed("org/toy-sentiment", {"data/train.jsonl": "".join(
        json.dumps({**r, "label": 1 - r["label"]}) + "\n" for r in rows).encode()}, repo_type="dataset")
    return {"v1": v1, "main": main, "ft": finetuned, "data_v1": data_v1, "data_main": data_main}


def _files(folder: Path, prefix: str = "") -> dict[str, Path]:
    return {prefix + p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def _recipe(bert, **overrides) -> dict:
    base = recipe_dict("bert", bert)
    raw = recipe_dict("bert", bert, models={**base["models"], "target": {"path": "org/tiny-bert", "revision": "v1"},
                                            "source_finetuned": "org/tiny-bert-ft"},
                      data={**base["data"], "path": "org/toy-sentiment", "revision": "v1", "samples_per_class": 2},
                      evaluation={"split": "validation"})
    raw.update(overrides)
    return raw


def _no_token_anywhere(*texts: str) -> None:
    for text in texts:
        for token in (GOOD, READ_ONLY, BAD):
            assert token not in text


# ------------------------------------------------------------------------------------------------ pulls
@pytest.mark.parametrize("revision,expected", [(None, "main"), ("main", "main"), ("v1", "v1"), ("commit", "v1")])
def test_pull_by_branch_tag_or_commit_downloads_only_what_is_needed(hub, seeded, revision, expected):
    revision = seeded["v1"] if revision == "commit" else revision
    resolved = resolve_model(ModelRef("org/tiny-bert", revision=revision), role="models.target")
    assert resolved.commit_hash == seeded[expected] and resolved.local_dir.name == seeded[expected]
    assert resolved.weight_format == "safetensors" and resolved.repo_id == "org/tiny-bert"
    # config, tokenizer and the safetensors the model uses; no pickle, no code, no other subfolder
    assert set(hub.downloads()) == {"config.json", "model.safetensors"} | TOKENIZER_FILES
    assert sorted(p.name for p in resolved.local_dir.iterdir()) == sorted({"config.json", "model.safetensors"}
                                                                           | TOKENIZER_FILES)


def test_pull_subfolder_and_remote_code_only_with_the_flag(hub, seeded):
    resolved = resolve_model(ModelRef("org/tiny-bert", revision="v1", subfolder="variant"), role="models.target")
    assert resolved.local_dir.parts[-2:] == (seeded["v1"], "variant")
    assert set(hub.downloads()) == {f"variant/{f}" for f in {"config.json", "model.safetensors"} | TOKENIZER_FILES}
    hub.requests.clear()
    resolve_model(ModelRef("org/tiny-bert", revision="v1"), role="models.target", trust_remote_code=True)
    assert "modeling_custom.py" in hub.downloads() and "pytorch_model.bin" not in hub.downloads()


def test_pickle_weights_only_with_allow_pickle(hub, server, bert, tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    torch.save(load_file(bert["target"] / "model.safetensors"), weights)
    files = {k: v for k, v in _files(bert["target"]).items() if k != "model.safetensors"}
    commit = server.seed("org/pickled-bert", {**files, "pytorch_model.bin": weights})
    with pytest.raises(ModelResolutionError, match="allow_pickle: true"):
        resolve_model(ModelRef("org/pickled-bert"), role="models.target")
    assert "pytorch_model.bin" not in hub.downloads()
    resolved = resolve_model(ModelRef("org/pickled-bert"), role="models.target", allow_pickle=True)
    assert resolved.weight_format == "pickle" and resolved.commit_hash == commit
    assert "pytorch_model.bin" in hub.downloads()


def test_dataset_pull_by_revision_only_the_config_files(hub, seeded, bert):
    v1 = load_split("org/toy-sentiment", split="train", revision="v1")
    main_ = load_split("org/toy-sentiment", split="train")
    local = [json.loads(line) for line in bert["train"].read_text().splitlines()]
    assert v1["label"] == [r["label"] for r in local] and main_["label"] == [1 - r["label"] for r in local]
    assert v1.gradfix_hub_source == {"repo_id": "org/toy-sentiment", "revision": "v1", "commit_hash": seeded["data_v1"]}
    assert main_.gradfix_hub_source["commit_hash"] == seeded["data_main"]
    assert "other/big.jsonl" not in hub.downloads()  # the 'other' config's files are not needed
    with pytest.raises(DataError) as info:
        load_split("org/toy-sentiment", split="train", revision="v9", where="data")
    assert "org/toy-sentiment" in str(info.value) and "'v9' not found" in str(info.value)


def test_transport_from_the_hub_records_every_commit(hub, seeded, bert, tmp_path):
    result = transport(_recipe(bert), tmp_path / "out", progress=False)
    models = result.report["models"]
    assert models["models.target"]["commit_hash"] == seeded["v1"] and models["models.target"]["revision"] == "v1"
    assert models["models.source_finetuned"]["commit_hash"] == seeded["ft"]
    data_source = f"org/toy-sentiment@{seeded['data_v1']}:train"
    assert result.report["votes"]["data_source"] == data_source
    assert result.report["evaluation"]["split"] == f"org/toy-sentiment@{seeded['data_v1']}:validation"
    card = (result.output_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/tiny-bert" and front["base_model_relation"] == "merge"
    assert TAGS <= set(front["tags"]) and front["datasets"] == ["org/toy-sentiment"]
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    for text in (seeded["v1"], seeded["ft"], data_source, "arxiv.org/abs/2510.09658", "α = 0.5", "N = 4",
                 "kept fraction", "| θ_B zero-shot |", "```yaml"):
        assert text in card
    # θ_B v1 from the Hub is the local θ_B: same tensors as a run on the local folders
    local = transport(recipe_dict("bert", bert, data={"samples_per_class": 2, "path": str(bert["train"])}),
                      tmp_path / "local", progress=False)
    hub_out, local_out = (load_file(r.output_dir / "model.safetensors") for r in (result, local))
    assert all(torch.equal(hub_out[k], local_out[k]) for k in local_out)


def test_offline_and_server_down_use_the_cache(hub, seeded, monkeypatch):
    first = resolve_model(ModelRef("org/tiny-bert", revision="v1"), role="models.target")
    load_split("org/toy-sentiment", split="train", revision="v1")
    down = free_port_url()  # the Hub is down: the cache answers
    monkeypatch.setattr(constants, "ENDPOINT", down)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", down + "/{repo_id}/resolve/{revision}/{filename}")
    assert resolve_model(ModelRef("org/tiny-bert", revision="v1"), role="models.target").local_dir == first.local_dir
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE: no request at all
    assert resolve_model(ModelRef("org/tiny-bert", revision="v1"), role="models.target").commit_hash == seeded["v1"]
    data = load_split("org/toy-sentiment", split="train", revision="v1")
    assert data.gradfix_hub_source["commit_hash"] == seeded["data_v1"]
    assert hub.requests == []
    with pytest.raises(ModelResolutionError, match="not in the local cache and the Hub cannot be reached"):
        resolve_model(ModelRef("org/tiny-bert", revision="main"), role="models.target")


def test_pull_errors_name_repo_revision_and_reason(hub, seeded, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    cases = [
        (ModelRef("org/no-such-model"), ["models.target", "'org/no-such-model' not found on " + hub.url]),
        (ModelRef("org/tiny-bert", revision="no-such-branch"),
         ["revision 'no-such-branch' not found", "org/tiny-bert"]),
    ]
    for ref, expected in cases:
        with pytest.raises(ModelResolutionError) as info:
            resolve_model(ref, role="models.target")
        assert all(text in str(info.value) for text in expected), str(info.value)
    hub.seed("alice/private-bert", {"config.json": b"{}"}, private=True)
    monkeypatch.delenv("HF_TOKEN")  # anonymous: a private repo looks like a missing one
    with pytest.raises(ModelResolutionError, match="or it is private"):
        resolve_model(ModelRef("alice/private-bert"), role="models.target", download_weights=False)
    monkeypatch.setenv("HF_TOKEN", BAD)
    with pytest.raises(ModelResolutionError) as info:
        resolve_model(ModelRef("org/tiny-bert"), role="models.target")
    assert "401 Unauthorized" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert any(h == f"Bearer {BAD}" for h in hub.auth_headers_seen)  # the token did go to the server...
    _no_token_anywhere(str(info.value), caplog.text)  # ...and nowhere else
    monkeypatch.setattr(constants, "ENDPOINT", free_port_url())
    with pytest.raises(ModelResolutionError) as info:
        resolve_model(ModelRef("org/other"), role="models.source")
    assert "models.source: org/other is not in the local cache and the Hub cannot be reached" in str(info.value)
    assert "ConnectError" in str(info.value)


# ------------------------------------------------------------------------------------------------ pushes
@pytest.fixture(scope="module")
def output(bert, tmp_path_factory):
    """A finished output folder of a local run (sharded, to exercise several LFS files)."""
    raw = recipe_dict("bert", bert, data={"samples_per_class": 2}, evaluation={"path": str(bert["test"])},
                      output={"max_shard_size": "40KB"})
    return transport(raw, tmp_path_factory.mktemp("out") / "out", progress=False)


def test_push_then_pull_back_by_revision_same_tensors(hub, output, bert, tmp_path, monkeypatch):
    commit = output.push_to_hub("org/gradfix-bert")
    refs = hub.refs("org/gradfix-bert")
    assert refs["branches"]["main"] == commit.oid and commit.commit_url.startswith(hub.url)
    history = hub.commits("org/gradfix-bert")
    assert len(history) == 2 and history[1]["title"] == "initial commit"  # exactly one commit was added
    title = history[0]["title"]
    assert title.startswith("GradFix gradfix (mask gradfix):") and "α=0.5" in title and "N=4" in title
    assert "| θ_B zero-shot |" in history[0]["description"]
    pushed = {p for p in history[0]["files"] if p != ".gitattributes"}
    assert pushed == {p.relative_to(output.output_dir).as_posix() for p in output.output_dir.rglob("*") if p.is_file()}
    assert len([p for p in pushed if p.endswith(".safetensors")]) > 1  # several LFS files, one commit
    front = yaml.safe_load(hub.file("org/gradfix-bert", "README.md").decode().split("---")[1])
    assert TAGS <= set(front["tags"]) and front["library_name"] == "transformers"
    # pull it back by its commit with a fresh cache, load it: the same tensors and the same predictions
    _point_client_at(monkeypatch, hub.url, tmp_path / "fresh-cache", tmp_path / "hf-home")
    pulled = resolve_model(ModelRef("org/gradfix-bert", revision=commit.oid), role="pulled")
    assert pulled.commit_hash == commit.oid
    local = {k: v for f in sorted(output.output_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    remote = {k: v for f in pulled.weight_files for k, v in load_file(f).items()}
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(pulled.local_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(pulled.local_dir)
    batch = tokenizer(["good great charming", "bad awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, output.model.eval()(**batch).logits)


def test_second_push_is_one_new_commit_and_old_revisions_stay(hub, output, bert, tmp_path):
    first = output.push_to_hub("org/twice")
    single = transport(recipe_dict("bert", bert, data={"samples_per_class": 2}, method={"alpha": 0.25}),
                       tmp_path / "single", progress=False)
    second = single.push_to_hub("org/twice", commit_message="α 0.25, one shard")
    history = hub.commits("org/twice")
    assert [c["oid"] for c in history[:2]] == [second.oid, first.oid] and history[0]["title"] == "α 0.25, one shard"
    assert sorted(p for p in history[0]["files"] if "safetensors" in p) == ["model.safetensors"]  # old shards gone
    assert any(p.startswith("model-0000") for p in history[1]["files"])
    old = resolve_model(ModelRef("org/twice", revision=first.oid), role="pulled")
    new = resolve_model(ModelRef("org/twice"), role="pulled")
    assert len(old.weight_files) > 1 and [f.name for f in new.weight_files] == ["model.safetensors"]
    assert new.commit_hash == second.oid and old.commit_hash == first.oid


def test_cli_run_push_to_hub_private_and_push_command(hub, bert, tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict("bert", bert, data={"samples_per_class": 2})))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "-o", str(out), "--no-progress", "--push-to-hub", "org/cli-private",
                 "--private"]) == 0
    printed = capsys.readouterr()
    oid = hub.refs("org/cli-private")["branches"]["main"]
    assert f"pushed {out} to {hub.url}/org/cli-private in commit {oid}" in printed.out
    _no_token_anywhere(printed.out, printed.err)
    assert json.loads((hub.root / "repos/models/org/cli-private/repo.json").read_text())["private"] is True
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelResolutionError, match="or it is private"):
        resolve_model(ModelRef("org/cli-private"), role="pulled")
    # the token from the login cache (`hf auth login` writes it there) works the same
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(GOOD)
    assert main(["push", str(out), "org/cli-push", "--revision", "experiment", "--commit-message", "by hand"]) == 0
    assert "in commit" in capsys.readouterr().out
    refs = hub.refs("org/cli-push")
    assert hub.commits("org/cli-push", revision="experiment")[0]["title"] == "by hand"
    assert refs["branches"]["main"] != refs["branches"]["experiment"]
    assert resolve_model(ModelRef("org/cli-private"), role="pulled").repo_id == "org/cli-private"


def test_votes_file_by_hub_reference(hub, seeded, bert, tmp_path, capsys):
    raw = _recipe(bert)
    votes = compute_recipe_votes(prepare(Recipe.from_dict(raw)), progress=False)
    votes.save(tmp_path / "votes.safetensors")
    commit = hub.seed("org/votes", {"bert/votes.safetensors": tmp_path / "votes.safetensors"}, repo_type="dataset",
                      tags=("v1",))
    reference = "hf://datasets/org/votes@v1/bert/votes.safetensors"
    from_hub = transport({**raw, "votes": reference}, tmp_path / "hub-votes", progress=False)
    from_file = transport({**raw, "votes": str(tmp_path / "votes.safetensors")}, tmp_path / "file-votes",
                          progress=False)
    assert from_hub.report["votes"]["file"] == f"hf://datasets/org/votes@{commit}/bert/votes.safetensors"
    a, b = (load_file(r.output_dir / "model.safetensors") for r in (from_hub, from_file))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["inspect", reference, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["target_revision"] == seeded["v1"]
    with pytest.raises(VotesFileError) as info:
        transport({**raw, "votes": "hf://datasets/org/votes@v1/missing.safetensors"}, tmp_path / "x", progress=False)
    assert "file 'missing.safetensors' not found in dataset repo 'org/votes' at revision 'v1'" in str(info.value)
    assert not (tmp_path / "x").exists()


def test_push_errors_bad_token_read_only_no_token_server_down(hub, output, bert, tmp_path, monkeypatch, capsys,
                                                             caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", BAD)
    with pytest.raises(GradFixError) as info:
        output.push_to_hub("org/never")
    assert "401 Unauthorized" in str(info.value) and "org/never" in str(info.value)
    # the CLI checks the token before the run: nothing is computed or written
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict("bert", bert)))
    assert main(["run", str(recipe), "-o", str(tmp_path / "o"), "--push-to-hub", "org/never"]) == 2
    printed = capsys.readouterr()
    assert "401 Unauthorized" in printed.err and not (tmp_path / "o").exists()
    _no_token_anywhere(str(info.value), printed.out, printed.err, caplog.text)
    monkeypatch.setenv("HF_TOKEN", READ_ONLY)
    with pytest.raises(GradFixError, match="403 Forbidden"):
        output.push_to_hub("org/never")
    monkeypatch.delenv("HF_TOKEN")
    for command in (["push", str(output.output_dir), "org/never"],
                    ["run", str(recipe), "-o", str(tmp_path / "o2"), "--push-to-hub", "org/never"]):
        assert main(command) == 2
        assert "no Hugging Face token found; set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err
    assert hub.refs("org/never") == {}
    monkeypatch.setenv("HF_TOKEN", GOOD)
    monkeypatch.setattr(constants, "ENDPOINT", free_port_url())
    with pytest.raises(GradFixError) as info:
        output.push_to_hub("org/never")
    assert "cannot be reached" in str(info.value) and "No commit was made" in str(info.value)
    for leftover in tmp_path.rglob("*"):
        if leftover.is_file():
            _no_token_anywhere(leftover.read_bytes().decode("utf-8", "replace"))


def test_dropped_commit_publishes_nothing_then_a_retry_works(hub, output, tmp_path):
    output.push_to_hub("org/flaky")
    head = hub.refs("org/flaky")["branches"]["main"]
    commits = len(hub.commits("org/flaky"))
    changed = output.save_pretrained(tmp_path / "changed")  # a second push with a changed card
    (changed / "README.md").write_text((changed / "README.md").read_text() + "\nEdited.\n")
    fault = hub.inject("POST", "/api/models/org/flaky/commit/", "drop")
    with pytest.raises(GradFixError) as info:
        TransportResult(changed).push_to_hub("org/flaky", commit_message="second")
    assert fault.hits == 1 and f"No commit was made: the branch is still at {head}" in str(info.value)
    assert hub.refs("org/flaky")["branches"]["main"] == head and len(hub.commits("org/flaky")) == commits
    again = TransportResult(changed).push_to_hub("org/flaky", commit_message="second")
    assert again.oid == hub.refs("org/flaky")["branches"]["main"] and len(hub.commits("org/flaky")) == commits + 1
    assert hub.file("org/flaky", "README.md").endswith(b"Edited.\n")


def test_dropped_lfs_upload_is_retried_by_the_client(hub, output):
    fault = hub.inject("PUT", "/lfs-objects/", "drop", read_bytes=1000)
    commit = output.push_to_hub("org/retried")
    assert fault.hits == 1
    for path in output.output_dir.glob("*.safetensors"):
        assert hub.file("org/retried", path.name, revision=commit.oid) == path.read_bytes()


def test_killed_push_mid_upload_publishes_nothing(hub, output, tmp_path):
    """`gradfix push` killed (SIGKILL) in the middle of an LFS upload: no commit, no half-stored object."""
    folder = output.save_pretrained(tmp_path / "big")
    big = os.urandom(24 * 2**20)  # larger than the socket buffers, so the upload is really cut
    (folder / "padding.bin").write_bytes(big)
    sha = hashlib.sha256(big).hexdigest()
    fault = hub.inject("PUT", f"/lfs-objects/{sha}", "hang", read_bytes=1 << 20)
    process = subprocess.Popen([sys.executable, "-m", "gradfix_hf", "push", str(folder), "org/killed"],
                               env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = fault.started.wait(120)
        assert started, process.communicate(timeout=60)[1][-3000:] if process.poll() is not None else "no upload"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        fault.release.set()
        if process.poll() is None:
            process.kill()
    deadline = time.time() + 10
    while any(n.startswith(".upload-") for n in hub.objects("org/killed")) and time.time() < deadline:
        time.sleep(0.05)  # the server sees the client gone and discards the partial upload
    refs = hub.refs("org/killed")  # create_repo ran, so the repo exists, with only its initial commit
    assert [c["title"] for c in hub.commits("org/killed")] == ["initial commit"]
    assert refs["branches"] == {"main": hub.commits("org/killed")[0]["oid"]} and refs["tags"] == {}
    stored = hub.objects("org/killed")
    assert sha in hub.aborted_uploads  # the upload was cut in the middle...
    assert sha not in stored and not any(name.startswith(".upload-") for name in stored)  # ...and not kept
    commit = TransportResult(folder).push_to_hub("org/killed")  # pushing again completes it, in one commit
    assert len(hub.commits("org/killed")) == 2
    assert hub.file("org/killed", "padding.bin", revision=commit.oid) == big
    for path in output.output_dir.glob("*.safetensors"):
        assert hub.file("org/killed", path.name, revision=commit.oid) == path.read_bytes()


# ------------------------------------------------------------------------------------------------ rebase
def test_rebase_dry_run_from_the_hub_reads_the_card_and_downloads_no_weight(hub, seeded, bert, capsys):
    """``gradfix rebase --dry-run`` on Hub ids: θ_A from the fine-tune's card, the splits of the Hub data set, and
    the size of what a run would pull, from the Hub's file listing; no weight file is downloaded."""
    from huggingface_hub import ModelCard, ModelCardData

    card = f"---\n{ModelCardData(base_model='org/tiny-bert', library_name='transformers').to_yaml()}\n---\n# ft\n"
    hub.seed("org/tiny-bert-ft-card", {**_files(bert["source_finetuned"]), "README.md": card.encode()})
    code = main(["rebase", "org/tiny-bert-ft-card", "--onto", "org/tiny-bert", "--data", "org/toy-sentiment",
                 "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "old base     org/tiny-bert  [from model card (base_model)]" in out
    assert "splits       vote: train; validation: validation; test: –" in out
    pulled = sorted(p.name for p in bert["source"].iterdir() if p.name in {"config.json", "model.safetensors"}
                    | TOKENIZER_FILES)  # what org/tiny-bert's main holds at its top level (tests above)
    size = sum((bert["source"] / name).stat().st_size for name in pulled)
    assert f"onto         from the Hub: {len(pulled)} files, {size / 1000:.1f} KB" in out
    assert not [f for f in hub.downloads() if f.endswith((".safetensors", ".bin"))]
    _no_token_anywhere(out, err)


def test_rebase_push_to_hub_alone_pushes_the_folder_and_leaves_no_temporary_one(hub, bert, tmp_path, capsys,
                                                                                monkeypatch):
    """``gradfix rebase ... --push-to-hub REPO`` without -o: the output goes to a temporary folder, is pushed in one
    commit (recipe.yaml and the model card included) and the temporary folder is removed."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    code = main(["rebase", str(bert["source_finetuned"]), "--onto", str(bert["target"]), "--base",
                 str(bert["source"]), "--data", str(bert["train"]), "--samples", "2", "--alphas", "1.0",
                 "--no-progress", "--push-to-hub", "org/rebased"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    oid = hub.refs("org/rebased")["branches"]["main"]
    assert f"to {hub.url}/org/rebased in commit {oid}" in printed.out
    files = hub.commits("org/rebased")[0]["files"]
    assert {"recipe.yaml", "README.md", "model.safetensors", "gradfix_report.json"} <= set(files)
    assert "## Rebase" in hub.file("org/rebased", "README.md").decode()
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary output folder is gone
    _no_token_anywhere(printed.out, printed.err)
