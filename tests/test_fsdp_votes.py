"""Sharded votes with PyTorch FSDP2 (``vote_sharding: fsdp``): real launches of CPU processes over gloo, no mocks.

The votes of 1 process, of 2 processes splitting the samples and of 2 processes sharding θ_B with FSDP2 are
compared bitwise (every tensor, its dtype, the evidence, the metadata) for each objective: classification (BERT),
causal LM (GPT-2), seq2seq (T5) and SFT (a Llama with grouped-query attention, and a LoRA fine-tune, so some
tensors are not voted). The sharded votes file (a shard per process and an index) is read back as one, merged,
and refused when a shard is missing, foreign or of another layout; a process that dies mid-vote leaves no index.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import recipe_dict
from gradfix_hf import Recipe, VotesFile, compute_recipe_votes, prepare, run_recipe
from gradfix_hf.cli import main
from gradfix_hf.errors import RecipeError, VotesFileError
from gradfix_hf.runtime import ProcessContext
from gradfix_hf.runtime.mesh import vote_mesh
from gradfix_hf.storage import shard_rows
from test_distributed import LAUNCH, _env, _free_port, launch, one_thread

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def recipes(trios, quickstart_root, tmp_path_factory) -> dict[str, str]:
    """One small recipe per objective; micro-batches of 2 so that the samples span several of them."""
    root = tmp_path_factory.mktemp("fsdp-recipes")
    out = {kind: _write(root / f"{kind}.yaml", recipe_dict(kind, trios(kind), data={"samples_per_class": 3},
                                                           vote_batch_size=2))
           for kind in ("bert", "gpt2", "t5")}
    chat = quickstart_root[0] / "gradfix-quickstart" / "chat"
    out["sft"] = _write(root / "sft.yaml", {
        "objective": "sft", "vote_batch_size": 2,
        "models": {"source": str(chat / "source"), "source_finetuned": str(chat / "source-lora"),
                   "target": str(chat / "target")},
        "data": {"path": str(chat / "data" / "train.jsonl"), "rows": 5}, "method": {"mask": "gradfix", "alpha": 1.0}})
    return out


@pytest.fixture(scope="module")
def single(recipes, tmp_path_factory) -> dict[str, Path]:
    """The votes of one process (this one, one thread), saved as one file per recipe."""
    root = tmp_path_factory.mktemp("fsdp-one")
    paths = {}
    with one_thread():
        for kind, recipe in recipes.items():
            paths[kind] = compute_recipe_votes(prepare(Recipe.from_yaml(recipe)), progress=False).save(
                root / f"{kind}.safetensors")
    return paths


@pytest.fixture(scope="module")
def sharded(recipes, tmp_path_factory) -> Path:
    """The four recipes' votes from 2 processes sharding θ_B with FSDP2 (one launch)."""
    out = tmp_path_factory.mktemp("fsdp-two")
    launch(2, str(WORKER), str(out), "fsdp", *recipes.values())
    return out


def assert_same_votes(one: VotesFile, two: VotesFile):
    assert one.metadata == two.metadata
    assert sorted(one.votes) == sorted(two.votes) and sorted(one.evidence) == sorted(two.evidence)
    for name in one.votes:
        assert one.votes[name].dtype == two.votes[name].dtype, name
        assert torch.equal(one.votes[name], two.votes[name]), name
    for name in one.evidence:
        assert torch.equal(one.evidence[name], two.evidence[name]), name


def test_two_processes_with_fsdp2_vote_bitwise_as_one_and_as_two_sample_parallel(recipes, single, sharded,
                                                                                  tmp_path, capsys):
    replicated = tmp_path / "samples"
    replicated.mkdir()
    launch(2, str(WORKER), str(replicated), "samples", *recipes.values())
    for kind in recipes:
        one = VotesFile.load(single[kind])
        index = sharded / f"{kind}.safetensors.index.json"
        shards = sorted(p.name for p in sharded.glob(f"{kind}-*.safetensors"))
        assert shards == [f"{kind}-00001-of-00002.safetensors", f"{kind}-00002-of-00002.safetensors"]
        assert not (sharded / f"{kind}.safetensors").exists()
        assert_same_votes(one, VotesFile.load(index))
        assert_same_votes(one, VotesFile.load(sharded / f"{kind}.safetensors"))  # the path it was written to
        for path in (index, sharded / f"{kind}.safetensors"):
            assert main(["inspect", str(path), "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["metadata"] == one.metadata
        assert_same_votes(one, VotesFile.load(replicated / f"{kind}.safetensors"))
        votes = torch.cat([v.flatten().to(torch.int64) for v in one.votes.values()])
        assert int(votes.abs().max()) == one.n_samples and bool(((votes.abs() < one.n_samples) & (votes != 0)).any())
    # each shard file holds its process's rows only: half of every tensor's rows (torch.chunk's split)
    index = json.loads((sharded / "sft.safetensors.index.json").read_text())
    with pytest.raises(VotesFileError, match="is shard 1 of 2 of a sharded votes file"):
        VotesFile.load(sharded / "sft-00001-of-00002.safetensors")
    with safe_open(str(sharded / "sft-00001-of-00002.safetensors"), framework="pt") as first:
        for name, shape in index["shapes"].items():
            assert tuple(first.get_slice(name).get_shape()) == (len(shard_rows(shape[0], 2, 0)), *shape[1:])
    sft = VotesFile.load(single["sft"])
    assert sft.not_voted and not set(sft.not_voted) & set(index["shapes"])  # the LoRA's frozen tensors: no vote


def test_three_and_four_processes_uneven_rows_empty_shards_and_a_2d_mesh(recipes, single, tmp_path):
    """3 processes: rows that 3 does not divide. 4 processes as 2 replicas × 2 shards: a process with no sample
    (6 samples in 3 micro-batches) runs padding micro-batches; counts are summed within and across replicas."""
    for processes, shard_size in ((3, 0), (4, 2)):
        out = tmp_path / f"p{processes}"
        out.mkdir()
        launch(processes, str(WORKER), str(out), "fsdp", "--shard-size", str(shard_size), recipes["bert"])
        shards = processes if shard_size == 0 else shard_size
        assert len(list(out.glob("bert-*.safetensors"))) == shards
        assert_same_votes(VotesFile.load(single["bert"]), VotesFile.load(out / "bert.safetensors"))


def test_a_merge_reads_the_sharded_votes_tensor_by_tensor(recipes, single, sharded, tmp_path):
    recipe = Recipe.from_yaml(recipes["gpt2"])
    with one_thread():
        from_one = run_recipe(recipe, tmp_path / "one", votes=single["gpt2"], progress=False)
        from_shards = run_recipe(recipe, tmp_path / "shards", votes=sharded / "gpt2.safetensors.index.json",
                                 progress=False)
    one, two = from_one.model.state_dict(), from_shards.model.state_dict()
    assert all(torch.equal(one[name], two[name]) for name in one)
    assert (tmp_path / "shards" / "model.safetensors").read_bytes() == (tmp_path / "one" / "model.safetensors"
                                                                       ).read_bytes()


def _copy(sharded: Path, tmp_path: Path, kind: str = "bert") -> Path:
    for path in sharded.glob(f"{kind}*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / f"{kind}.safetensors.index.json"


def test_a_missing_foreign_or_misplaced_shard_is_refused(sharded, tmp_path):
    index = _copy(sharded, tmp_path)
    (tmp_path / "bert-00002-of-00002.safetensors").unlink()
    with pytest.raises(VotesFileError, match=r"shard 2 of 2 \(bert-00002-of-00002.safetensors\) is missing"):
        VotesFile.load(index)
    # a shard of another vote (another recipe's vote at the same place): its vote_id differs
    shutil.copy(sharded / "gpt2-00002-of-00002.safetensors", tmp_path / "bert-00002-of-00002.safetensors")
    with pytest.raises(VotesFileError, match="foreign shard"):
        VotesFile.load(index)
    # the shards swapped: each is refused as the wrong shard
    shutil.copy(sharded / "bert-00001-of-00002.safetensors", tmp_path / "bert-00002-of-00002.safetensors")
    with pytest.raises(VotesFileError, match="is shard 0 of 2, but the index lists it as shard 1"):
        VotesFile.load(index)
    # an index that lists another shard count, or is not JSON
    content = json.loads((sharded / "bert.safetensors.index.json").read_text())
    index.write_text(json.dumps({**content, "shards": content["shards"][:1]}))
    with pytest.raises(VotesFileError, match="is shard 0 of 2, but the index lists it as shard 0 of 1"):
        VotesFile.load(index)
    index.write_text("{not json")
    with pytest.raises(VotesFileError, match="corrupt votes index"):
        VotesFile.load(index)


def test_a_shard_count_that_does_not_divide_and_recipe_errors():
    with pytest.raises(RecipeError, match="vote_shard_size: 3 does not divide the 2 processes"):
        vote_mesh(ProcessContext(rank=0, world=2), 3)
    with pytest.raises(RecipeError, match="fsdp.*batched engine"):
        Recipe.from_dict({"models": {"source": "a", "source_finetuned": "b", "target": "c"},
                          "vote_sharding": "fsdp", "vote_engine": "reference"})
    with pytest.raises(RecipeError, match="vote_sharding"):
        Recipe.from_dict({"models": {"source": "a", "source_finetuned": "b", "target": "c"},
                          "vote_sharding": "fdsp"})


def test_a_process_that_dies_mid_vote_leaves_no_votes_file(recipes, tmp_path):
    import subprocess

    cmd = [*LAUNCH, "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER), str(tmp_path),
           "fsdp", "--die-at", "4", recipes["bert"]]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout
    assert re.search(r"exitcode\s*:\s*3\b", done.stdout + done.stderr)  # the process that died, as it died
    assert list(tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.iterdir())


def test_a_shard_that_cannot_be_written_leaves_no_index_and_no_shard(recipes, tmp_path):
    import subprocess

    (tmp_path / "bert-00002-of-00002.safetensors").mkdir()  # the second process cannot write its shard there
    cmd = [*LAUNCH, "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER), str(tmp_path),
           "fsdp", recipes["bert"]]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "bert-00002-of-00002.safetensors" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-00002-of-00002.safetensors"]


def test_cli_run_under_accelerate_fsdp2_writes_the_folder_of_one_process(recipes, tmp_path):
    """``accelerate launch --use_fsdp --fsdp_version 2``: ``vote_sharding: auto`` shards θ_B (the votes cache holds a
    sharded votes file), and the output folder is that of one process."""
    import subprocess

    recipe = Recipe.from_yaml(recipes["bert"])
    with one_thread():
        run_recipe(recipe, tmp_path / "one", progress=False)
    cached = _write(tmp_path / "cached.yaml", {**yaml.safe_load(Path(recipes["bert"]).read_text()),
                                               "votes_cache": str(tmp_path / "cache")})
    cmd = [*LAUNCH[:3], "--use_fsdp", "--fsdp_version", "2", *LAUNCH[4:], "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "gradfix_hf", "run", cached, "-o",
           str(tmp_path / "two"), "--no-progress"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    cache = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cache) == 3 and cache[-1].endswith(".safetensors.index.json"), cache
    assert (tmp_path / "two" / "model.safetensors").read_bytes() == (tmp_path / "one" / "model.safetensors"
                                                                     ).read_bytes()


def test_a_nan_on_one_process_stops_every_process_with_its_error(recipes, tmp_path):
    """The last process's second micro-batch has NaN losses: it is shared before the backward, so every process
    raises (none waits in a collective) and nothing is written."""
    import subprocess

    cmd = [*LAUNCH, "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER), str(tmp_path),
           "fsdp", "--nan-at", "3", recipes["bert"]]  # call 1 is the probe's, 2 and 3 its micro-batches
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("NonFiniteError") >= 2, done.stderr[-3000:]  # raised by both processes
    # samples 4 and 5 are the last process's second micro-batch; both processes name sample 4 by its global index
    assert done.stderr.count("process 1 of 2: sample 4: the loss on the target is NaN/inf.") >= 2, done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_run_without_a_votes_cache_removes_its_temporary_shards(recipes, single, tmp_path):
    """``run_recipe`` under FSDP2 with no votes cache: the shards go to a temporary folder, removed after the
    merge; the merged model is the one-process one."""
    import subprocess

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    cmd = [*LAUNCH, "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER),
           str(tmp_path / "out"), "fsdp", "--run", recipes["gpt2"]]
    done = subprocess.run(cmd, env={**_env(), "TMPDIR": str(temporary)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    assert [p.name for p in temporary.iterdir() if p.name.startswith("gradfix")] == []  # (torchrun keeps its own)
    with one_thread():
        run_recipe(Recipe.from_yaml(recipes["gpt2"]), tmp_path / "one", votes=single["gpt2"], progress=False)
    assert (tmp_path / "out" / "gpt2" / "model.safetensors").read_bytes() == (tmp_path / "one" / "model.safetensors"
                                                                              ).read_bytes()


def test_a_model_with_a_scalar_parameter_is_refused_before_any_weight_is_read(clip_trio):
    from conftest import clip_recipe_dict
    from gradfix_hf.plan.sharded_model import load_sharded_base_model

    prepared = prepare(Recipe.from_dict(clip_recipe_dict(clip_trio)))
    with pytest.raises(RecipeError, match="cannot shard the scalar parameter 'logit_scale' of CLIPModel"):
        load_sharded_base_model(prepared.plan, vote_mesh(ProcessContext()))
