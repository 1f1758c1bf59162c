"""Where outputs may be written (gradfix_hf.storage.destinations): never over an input, over a folder gradfix did
not write, or over something that appeared during the run; atomically, with the umask's modes; leftovers of dead
runs cleaned; a full disk is a clean error that leaves nothing; votes files are byte-identical for identical
content, from any process."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gradfix_hf.errors import OutputError
from gradfix_hf.storage import VotesFile, atomic_file, atomic_folder, check_destination, check_not_an_input


def _mine(path: Path) -> bool:
    return (path / "mine.txt").is_file()


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("output,message", [
    ("model", "is models.target"), ("", "contains models.target"), ("model/out", "lies inside models.target"),
    ("sub/data.jsonl", "is data.path"), ("sub", "contains data.path")])
def test_an_output_never_replaces_contains_or_lies_inside_an_input(tmp_path, output, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.jsonl").write_text("{}\n")
    inputs = [("models.target", tmp_path / "model"), ("data.path", tmp_path / "sub" / "data.jsonl")]
    with pytest.raises(OutputError, match=message):
        check_not_an_input(tmp_path / output, inputs)
    check_not_an_input(tmp_path / "elsewhere", inputs)  # beside the inputs is fine


def test_symbolic_links_are_resolved_before_comparing(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "model")
    with pytest.raises(OutputError, match="lies inside models.target"):
        check_not_an_input(tmp_path / "link" / "out", [("models.target", tmp_path / "model")])


def test_overwrite_replaces_only_an_empty_folder_or_a_previous_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="already exists and is not empty .use --overwrite, or overwrite=True"):
        check_destination(foreign, recognise=_mine)
    with pytest.raises(OutputError, match=r"a folder holding 1 entries \(thesis.tex\) that gradfix did not write"):
        with atomic_folder(foreign, overwrite=True, recognise=_mine) as tmp:
            (tmp / "mine.txt").write_text("new")
    assert (foreign / "thesis.tex").read_text() == "years of work" and not (foreign / "mine.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty, recognise=_mine) as tmp:  # an empty folder needs no --overwrite
        (tmp / "mine.txt").write_text("first")
    with atomic_folder(empty, overwrite=True, recognise=_mine) as tmp:  # a previous output is replaced
        (tmp / "mine.txt").write_text("second")
    assert (empty / "mine.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]  # nothing hidden left behind


def test_something_that_appears_during_the_run_is_never_removed(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while this run was writing") as caught:
        with atomic_folder(out, overwrite=True, recognise=_mine) as tmp:
            (tmp / "mine.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("someone else's")  # another process writes here meanwhile
    assert (out / "theirs.txt").read_text() == "someone else's" and not (out / "mine.txt").exists()
    kept = Path(str(caught.value).rsplit(" is at ", 1)[1].rstrip("."))
    assert (kept / "mine.txt").read_text() == "ours"  # the finished output is kept, under the name given
    target = tmp_path / "votes.bin"
    with pytest.raises(OutputError, match="appeared while this run was writing"):
        atomic_file(target, lambda p: (p.write_text("ours"), target.write_text("theirs")))
    assert target.read_text() == "theirs"


def test_outputs_follow_the_umask_and_an_interrupted_block_leaves_nothing(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
        path = atomic_file(tmp_path / "file.bin", lambda p: p.write_bytes(b"y"))
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "weights.bin").stat().st_mode & 0o777 == 0o644
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "never") as tmp:
            (tmp / "half.bin").write_bytes(b"half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "out"]


def test_leftovers_of_dead_runs_are_cleaned_and_a_moved_aside_output_is_put_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".out.partial-{dead}-abc").mkdir()
    (tmp_path / f".out.partial-{os.getpid()}-live").mkdir()  # a live process's: left alone
    (tmp_path / f".file.bin.partial-{dead}-xyz.tmp").write_text("half")
    aside = tmp_path / f".prev.old-{dead}-1234"
    aside.mkdir()
    (aside / "mine.txt").write_text("the previous output")
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "mine.txt").write_text("new")
    atomic_file(tmp_path / "file.bin", lambda p: p.write_text("new"))
    from gradfix_hf.storage.destinations import clean_leftovers
    clean_leftovers(tmp_path / "prev")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".out.partial-{os.getpid()}-live", "file.bin", "out", "prev"]
    assert (tmp_path / "prev" / "mine.txt").read_text() == "the previous output"


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, torch
    from gradfix_hf.storage import atomic_folder, VotesFile
    from gradfix_hf.errors import OutputError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    out = sys.argv[1]
    try:
        with atomic_folder(out + "/folder") as tmp:
            (tmp / "big.bin").write_bytes(bytes(300_000))
    except OutputError as exc:
        print("folder:", exc)
    votes = {"w": torch.ones(200_000, dtype=torch.int8)}
    meta = {"format": "gradfix-votes", "format_version": "1", "n_samples": "3", "aggregation": "majority",
            "objective": "x", "target": "t", "data_fingerprint": "d", "params_fingerprint": "p",
            "library_version": "0"}
    try:
        VotesFile(votes=votes, metadata=meta).save(out + "/votes.safetensors")
    except OutputError as exc:
        print("votes:", exc)
""")


def test_a_full_disk_is_a_clean_error_that_leaves_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "folder:" in done.stdout and "votes:" in done.stdout and done.stdout.count("no space left") == 2
    assert list(tmp_path.iterdir()) == []


def test_votes_files_are_byte_identical_whatever_the_process(tmp_path):
    """The safetensors library orders metadata by hash, which changes from process to process."""
    script = textwrap.dedent("""
        import sys, torch
        from gradfix_hf.storage import VotesFile
        meta = {k: "v" + k for k in ("format_version", "n_samples", "aggregation", "objective", "target", "zeta",
                                     "data_fingerprint", "params_fingerprint", "library_version", "alpha")}
        meta.update(format="gradfix-votes", n_samples="3", aggregation="majority")
        votes = {"b": torch.tensor([1, -1, 0], dtype=torch.int8), "a": torch.tensor([[3, 0]], dtype=torch.int8)}
        VotesFile(votes=votes, metadata=meta, evidence={"b": torch.tensor([True, True, False])}).save(sys.argv[1])
    """)
    files = []
    for seed in ("1", "2", "3"):
        path = tmp_path / f"votes{seed}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        files.append(path.read_bytes())
    assert files[0] == files[1] == files[2]
    loaded = VotesFile.load(tmp_path / "votes1.safetensors")
    assert torch.equal(loaded.votes["b"], torch.tensor([1, -1, 0], dtype=torch.int8))
    assert loaded.evidence["b"].tolist() == [True, True, False]


def test_a_votes_file_replaces_only_a_previous_votes_file(tmp_path):
    votes = {"w": torch.tensor([1, 0], dtype=torch.int8)}
    meta = {"format": "gradfix-votes", "format_version": "1", "n_samples": "1", "aggregation": "majority",
            "objective": "x", "target": "t", "data_fingerprint": "d", "params_fingerprint": "p",
            "library_version": "0"}
    path = VotesFile(votes=votes, metadata=meta).save(tmp_path / "votes.safetensors")
    with pytest.raises(OutputError, match="already exists"):
        VotesFile(votes=votes, metadata=meta).save(path)
    VotesFile(votes=votes, metadata={**meta, "target": "u"}).save(path, overwrite=True)
    assert VotesFile.load(path).metadata["target"] == "u"
    notes = tmp_path / "notes.safetensors"
    notes.write_bytes(b"not a votes file")
    with pytest.raises(OutputError, match="that gradfix did not write"):
        VotesFile(votes=votes, metadata=meta).save(notes, overwrite=True)
    assert notes.read_bytes() == b"not a votes file"

