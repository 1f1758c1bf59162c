"""Stage 1 over several processes: real ``accelerate launch`` runs on CPU (gloo), no mocks.

Each launch starts 2 or 3 CPU processes with one torch thread each; the single-process reference is
computed in this process with one torch thread too. Compared bitwise: every vote tensor, its dtype, the
evidence, the metadata, and for ``run`` the whole output folder. ``accelerate launch --multi_gpu`` is the
torchrun-based launcher; on a machine without GPUs (and with ``ACCELERATE_USE_CPU``) the processes run
on the CPU over gloo (``--cpu`` with several processes would need MPI).
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import recipe_dict
from gradfix_hf import Recipe, VotesFile, compute_recipe_votes, prepare, run_recipe
from gradfix_hf.votes import compute_votes, vote_dtype
from gradfix_hf.runtime import ProcessContext, launched_rank, process_context, shard_indices
from gradfix_hf.votes.distributed import reduce_votes

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(WORKER.parent), env.get("PYTHONPATH")])))
    return env


def launch(processes: int, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``accelerate launch`` with ``processes`` CPU processes; ``args`` start with ``-m gradfix_hf`` or a script."""
    cmd = [*LAUNCH, "--num_processes", str(processes), "--main_process_port", str(_free_port()), *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, f"launch failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def raw(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {}), {key: handle.get_tensor(key) for key in handle.keys()}


def assert_same_file(one, two):
    """Bitwise: same keys (votes and evidence), dtypes, values and metadata."""
    meta_one, tensors_one = raw(one)
    meta_two, tensors_two = raw(two)
    assert meta_one == meta_two
    assert set(tensors_one) == set(tensors_two)
    for key, value in tensors_one.items():
        assert tensors_two[key].dtype == value.dtype, key
        assert torch.equal(tensors_two[key], value), key


def assert_nontrivial(votes: VotesFile):
    """The comparison is not vacuous: disagreement between samples, unanimity, and missing evidence."""
    flat = torch.cat([v.flatten().to(torch.int64) for v in votes.votes.values()])
    assert int(flat.abs().max()) == votes.n_samples
    assert bool(((flat.abs() < votes.n_samples) & (flat != 0)).any())
    assert votes.evidence


# --------------------------------------------------------------------------- pure functions, one process

def test_shard_indices_are_contiguous_balanced_and_cover_all_samples():
    for n in range(0, 12):
        for world in range(1, 6):
            shards = [shard_indices(n, rank, world) for rank in range(world)]
            assert [i for s in shards for i in s] == list(range(n))  # contiguous, in order, each once
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [list(shard_indices(5, r, 3)) for r in range(3)] == [[0, 1], [2, 3], [4]]
    assert [list(shard_indices(2, r, 3)) for r in range(3)] == [[0], [1], []]
    for bad in ((3, 2, 2), (3, -1, 2), (3, 0, 0), (-1, 0, 1)):
        with pytest.raises(ValueError):
            shard_indices(*bad)


def test_single_process_reduction_narrows_to_the_total_dtype_and_keeps_partial_evidence():
    votes = {"a": torch.tensor([130, -2, 0], dtype=torch.int32), "b": torch.tensor([1, 0], dtype=torch.int32)}
    evidence = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, True])}
    reduced, merged = reduce_votes(votes, evidence, n_samples=130, context=ProcessContext())
    assert reduced["a"].dtype == torch.int16 == vote_dtype(130) and reduced["a"].tolist() == [130, -2, 0]
    assert reduced["b"].dtype == torch.int16
    assert set(merged) == {"a"}  # "b" turned out complete
    sums = {"a": torch.tensor([0.5, -1e-30, 0.0], dtype=torch.float32)}
    reduced, _ = reduce_votes(sums, {}, n_samples=4, aggregation="mean", context=ProcessContext())
    assert reduced["a"].dtype == torch.int8 and reduced["a"].tolist() == [-1, 1, 0]


def test_launched_rank_only_counts_under_a_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("RANK", "1")  # a stray RANK without a world of several processes: still the main one
    assert launched_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_rank() == 1


def test_plain_process_needs_no_launcher_and_creates_no_process_group(trios):
    context = process_context()
    assert (context.rank, context.world, context.is_main, context.distributed) == (0, 1, True, False)
    prepared = prepare(Recipe.from_dict(recipe_dict("bert", trios("bert"), data={"samples_per_class": 1})))
    compute_recipe_votes(prepared, progress=False)
    assert not torch.distributed.is_initialized()


# --------------------------------------------------------------------------- real launches

def test_cli_votes_two_processes_bitwise_equal_one_process(trios, tmp_path):
    # micro-batches of 2: the 6 samples are 3 micro-batches, shared 2 + 1 between the processes (whole
    # micro-batches are sharded, so both process counts pad every micro-batch the same way)
    recipe = _write(tmp_path / "bert.yaml", recipe_dict("bert", trios("bert"), data={"samples_per_class": 3},
                                                         vote_batch_size=2))
    with one_thread():
        single = compute_recipe_votes(prepare(Recipe.from_yaml(recipe)), progress=False)
    single.save(tmp_path / "one.safetensors")
    assert single.n_samples == 6
    assert_nontrivial(single)
    done = launch(2, "-m", "gradfix_hf", "votes", recipe, "-o", str(tmp_path / "two.safetensors"), "--no-progress")
    assert done.stdout.count("wrote ") == 1, done.stdout  # only the main process prints
    assert_same_file(tmp_path / "one.safetensors", tmp_path / "two.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert.yaml", "one.safetensors", "two.safetensors"]


def test_cli_run_two_processes_writes_one_folder_equal_to_one_process(trios, tmp_path):
    trio = trios("bert")
    recipe = _write(tmp_path / "run.yaml", recipe_dict("bert", trio, data={"samples_per_class": 3},
                                                        evaluation={"path": str(trio["test"])}, vote_batch_size=4))
    with one_thread():
        run_recipe(Recipe.from_yaml(recipe), tmp_path / "one" / "out", progress=False)
    done = launch(2, "-m", "gradfix_hf", "run", recipe, "-o", str(tmp_path / "two" / "out"), "--no-progress")
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("θ_B zero-shot") == 1, done.stdout
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["out"]  # exactly one folder, no leftovers
    one, two = tmp_path / "one" / "out", tmp_path / "two" / "out"
    files = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == files and "model.safetensors" in files
    for name in files:
        if name == "gradfix_report.json":
            reports = [json.loads((d / name).read_text()) for d in (one, two)]
            for report in reports:
                report.pop("seconds")
            assert reports[0] == reports[1]
            assert reports[0]["votes"]["n_samples"] == 6
        elif name.endswith(".safetensors"):
            assert_same_file(one / name, two / name)
        else:
            assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_three_processes_uneven_and_empty_shards_and_errors(trios, tmp_path):
    """3 processes: N=2 (one process has no sample), N=5 and N=4 (uneven shards), N=130 (int16 votes from
    int8-sized shards); majority and mean; a NaN in the last shard; gpt2 majority and bert mean recipes."""
    gpt2 = _write(tmp_path / "gpt2.yaml", recipe_dict("gpt2", trios("gpt2"), data={"samples_per_class": 2},
                                                       vote_batch_size=1))
    bert_mean = _write(tmp_path / "bert-mean.yaml", recipe_dict("bert", trios("bert"), data={"samples_per_class": 2},
                                                                 method={"mask": "mean"}))
    out = tmp_path / "out"
    out.mkdir()
    launch(3, str(WORKER), str(out), gpt2, bert_mean)

    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(3)]
    assert [(i["rank"], i["world"], i["is_main"]) for i in infos] == [(0, 3, True), (1, 3, False), (2, 3, False)]
    assert all(i["initialized"] and i["backend"] == "gloo" for i in infos)
    assert [i["shards"]["2"] for i in infos] == [[0], [1], []]
    assert [i["shards"]["5"] for i in infos] == [[0, 1], [2, 3], [4]]
    assert [len(i["shards"]["130"]) for i in infos] == [44, 43, 43]

    # the NaN is in sample 4, i.e. process 2's shard: it raises its own error, the others say where it failed
    kinds = [i["errors"]["nan"][0] for i in infos]
    assert kinds == ["GradFixError", "GradFixError", "NonFiniteError"]
    assert "process 2 of 3, samples 4–4 of 5 ('sample i' below is sample 4+i): sample 0:" in infos[2]["errors"]["nan"][1]
    assert all("votes failed on process 2 of 3: NonFiniteError" in i["errors"]["nan"][1] for i in infos[:2])

    from distributed_worker import linear_loss, linear_problem

    for n_samples in (2, 5, 130):
        for aggregation in ("majority", "mean"):
            model, examples = linear_problem(n_samples)
            with one_thread():
                votes, evidence = compute_votes(model, linear_loss, examples, ["weight", "bias"],
                                                aggregation=aggregation, progress=False)
            _, got = raw(out / f"linear-{aggregation}-{n_samples}.safetensors")
            assert set(got) == {"weight", "bias"} | {"evidence/" + k for k in evidence}, (aggregation, n_samples)
            for name in ("weight", "bias"):
                assert got[name].dtype == vote_dtype(n_samples) == votes[name].dtype
                assert torch.equal(got[name], votes[name]), (aggregation, n_samples, name)
            assert torch.equal(got["evidence/weight"].bool(), evidence["weight"])
            if aggregation == "majority" and n_samples == 130:
                assert int(got["bias"][0]) == 130  # above int8: the total N, not a shard's, sets the dtype

    for path, kind in ((gpt2, "gpt2"), (bert_mean, "bert")):
        with one_thread():
            single = compute_recipe_votes(prepare(Recipe.from_yaml(path)), progress=False)
        single.save(tmp_path / f"{kind}-one.safetensors")
        assert single.n_samples == 4
        # mean votes are exact only up to float summation order; on these models no summed gradient lies
        # within rounding of zero, so they match one process bit for bit (majority votes always do)
        assert_same_file(tmp_path / f"{kind}-one.safetensors", out / (Path(path).stem + ".safetensors"))


def test_shards_are_whole_micro_batches():
    from gradfix_hf.votes.distributed import shard_in_blocks

    for n, world, block in [(6, 2, 2), (6, 2, 16), (130, 3, 16), (2, 3, 16), (5, 3, 2), (0, 2, 4), (9, 4, 1)]:
        shards = [shard_in_blocks(n, rank, world, block) for rank in range(world)]
        assert [i for shard in shards for i in shard] == list(range(n))  # a partition, in order
        for shard in filter(len, shards):  # each starts on a micro-batch boundary, whole micro-batches but the last
            assert shard.start % block == 0 and (len(shard) % block == 0 or shard.stop == n)
        if block == 1:
            assert shards == [shard_indices(n, rank, world) for rank in range(world)]
    assert [len(shard_in_blocks(6, r, 2, 2)) for r in range(2)] == [4, 2]
