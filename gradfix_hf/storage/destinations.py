"""Where an output may be written, and how: never over an input, never over something the user did not ask to
replace, atomically, and with the modes the umask gives.

Every output (an output folder, a votes file, a sweep's JSON/markdown/PNG) is written under a hidden temporary
name next to its destination (``.NAME.partial-PID-…``) and moved into place at the end, so an interrupted run
never leaves an output that looks finished. The rules:

* An output path that is, contains, or lies inside an input (a model folder, an adapter, a data file, a votes
  file, the recipe) is refused before any work, with or without ``overwrite``.
* ``overwrite`` replaces an empty folder or a previous output of this tool (``recognise`` tells which), nothing
  else: any other existing file or folder is refused with its name.
* The final swap re-checks the destination: something that appeared there during the run is never removed (the
  new output is kept beside it, under a name the error gives). A previous output is moved aside, the new one
  moved in, and only then the old one deleted.
* Leftovers of dead runs on the same path (``.partial-PID`` of a process that is gone) are removed by the next
  run; a previous output that a dead run had moved aside is put back.
* A full disk (or a file-size limit) ends in a clean :class:`OutputError`, with nothing left behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from ..errors import OutputError

PathLike = Union[str, os.PathLike]
#: a recogniser: whether an existing path is a previous output of this tool (which ``overwrite`` may replace)
Recogniser = Callable[[Path], bool]
_FULL = (errno.ENOSPC, errno.EFBIG) + ((errno.EDQUOT,) if hasattr(errno, "EDQUOT") else ())


def real_path(path: PathLike) -> Path:
    """The absolute path with ``~`` expanded and every symbolic link resolved (how inputs and outputs compare)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_not_an_input(output: PathLike, inputs: Iterable[tuple[str, PathLike]], where: str = "output") -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs`` ((what it is, path) pairs)."""
    out = real_path(output)
    for what, path in inputs:
        given = real_path(path)
        if out == given:
            relation = "is"
        elif _inside(given, out):
            relation = "contains"
        elif _inside(out, given) and given.is_dir():
            relation = "lies inside"
        else:
            continue
        raise OutputError(f"{where} {output} {relation} {what} ({path}): an output never replaces, contains or "
                          "lies inside an input. Choose another output path.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _leftovers(destination: Path, kind: str) -> Iterator[tuple[Path, int]]:
    """(path, pid) of the hidden ``.NAME.<kind>-PID-…`` entries next to ``destination``."""
    pattern = re.compile(rf"^\.{re.escape(destination.name)}\.{kind}-(\d+)-")
    if not destination.parent.is_dir():
        return
    for entry in destination.parent.iterdir():
        match = pattern.match(entry.name)
        if match:
            yield entry, int(match.group(1))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def clean_leftovers(destination: PathLike) -> None:
    """Remove what dead runs left next to ``destination`` (their partial outputs), and put back a previous output
    that a dead run had moved aside but not replaced. Entries of live processes are left alone."""
    destination = Path(destination)
    for path, pid in list(_leftovers(destination, "partial")):
        if not _alive(pid):
            _remove(path)
    for path, pid in list(_leftovers(destination, "old")):
        if _alive(pid):
            continue
        if not os.path.lexists(destination):
            with contextlib.suppress(OSError):
                os.rename(path, destination)
                continue
        _remove(path)


def _describe(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        return f"a folder holding {len(names)} entries ({shown})"
    return f"a file of {path.stat().st_size} bytes"


def check_destination(destination: PathLike, *, overwrite: bool = False, recognise: Optional[Recogniser] = None,
                      folder: bool = True, where: str = "output folder") -> None:
    """Before any work: refuse a destination that cannot be written, or that exists and may not be replaced."""
    path = Path(destination)
    if path.is_symlink():
        raise OutputError(f"{where} {path} is a symbolic link; give the path it points to, or another path.")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{where} {path} cannot be created: {blocking} is a file.")
    if not path.exists():
        return
    if folder and not path.is_dir():
        raise OutputError(f"{where} {path} is an existing file, not a folder.")
    if not folder and path.is_dir():
        raise OutputError(f"{where} {path} is an existing folder, not a file.")
    if folder and not any(path.iterdir()):
        return  # an empty folder is replaced without asking
    if not overwrite:
        state = "already exists and is not empty" if folder else "already exists"
        raise OutputError(f"{where} {path} {state} (use --overwrite, or overwrite=True from Python).")
    if recognise is None or not recognise(path):
        raise OutputError(f"{where} {path} is {_describe(path)} that gradfix did not write; overwrite replaces "
                          "only an empty folder or a previous gradfix output. Remove it yourself, or choose "
                          "another path.")


def _mode_mask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain ``open``/``mkdir`` would have given:
    temporary files and folders are created 0600/0700."""
    mask = _mode_mask()
    entries = [path] + (list(path.rglob("*")) if path.is_dir() else [])
    for entry in entries:
        if not entry.is_symlink():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def _written_here(path: Path, destination: Path, temporary: Optional[Path]) -> bool:
    """Whether ``path`` is one this write made: the destination, its folder, or its hidden temporary entries."""
    if temporary is not None and (path == temporary or temporary in path.parents):
        return True
    if path in (destination, destination.parent):
        return True
    return path.parent == destination.parent and path.name.startswith(f".{destination.name}.")


def _write_failure(exc: OSError, destination: Path, temporary: Optional[Path], where: str) -> Optional[OutputError]:
    """The clean error for a failed write (None for an OSError that is not about writing this output)."""
    if exc.errno in _FULL:
        return OutputError(f"{where} {destination}: no space left to write it ({exc.strerror}); nothing was left "
                           "behind.")
    failed = Path(os.fspath(exc.filename)) if exc.filename is not None else None
    if failed is not None and _written_here(failed, destination, temporary):
        return OutputError(f"{where} {destination}: cannot write it ({exc.strerror}: {exc.filename}).")
    return None


def _conflict(destination: Path, kept: Path, where: str) -> OutputError:
    return OutputError(f"{where} {destination} appeared while this run was writing and was left alone; this "
                       f"run's output is at {kept}.")


def _keep_aside(temporary: Path, destination: Path) -> Path:
    kept = destination.with_name(f"{destination.name}.new-{os.getpid()}")
    os.rename(temporary, kept)
    return kept


def _link(temporary: Path, destination: Path) -> None:
    """Move a file into place without ever replacing one: a hard link (refused if ``destination`` exists), or,
    where the file system has none, a rename right after checking that nothing is there."""
    try:
        os.link(temporary, destination)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(destination):
            raise FileExistsError(errno.EEXIST, "exists", str(destination)) from None
        os.rename(temporary, destination)
        return
    temporary.unlink()


def _swap_in(temporary: Path, destination: Path, *, overwrite: bool, recognise: Optional[Recogniser],
             folder: bool, where: str) -> None:
    """Move ``temporary`` to ``destination``; replace only what the rules allow, as it is at this moment."""
    place = os.rename if folder else _link  # a link never replaces a file; rename only replaces an empty folder
    if not os.path.lexists(destination) or (folder and destination.is_dir() and not any(destination.iterdir())):
        try:
            place(temporary, destination)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            raise _conflict(destination, _keep_aside(temporary, destination), where) from None
        return
    if not (overwrite and recognise is not None and recognise(destination)):
        raise _conflict(destination, _keep_aside(temporary, destination), where)
    aside = destination.with_name(f".{destination.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    os.rename(destination, aside)
    if not recognise(aside):  # replaced by something else between the check and the move: put it back
        os.rename(aside, destination)
        raise _conflict(destination, _keep_aside(temporary, destination), where)
    try:
        place(temporary, destination)
    except OSError:
        os.rename(aside, destination)
        raise _conflict(destination, _keep_aside(temporary, destination), where) from None
    _remove(aside)


@contextlib.contextmanager
def _staged(destination: PathLike, *, folder: bool, overwrite: bool, recognise: Optional[Recogniser],
            where: str) -> Iterator[Path]:
    """The frame of every atomic write: clean dead runs' leftovers, check the destination, yield a hidden
    temporary folder or file next to it, and move it into place (or remove it) at the end."""
    destination = Path(destination)
    clean_leftovers(destination)
    check_destination(destination, overwrite=overwrite, recognise=recognise, folder=folder, where=where)
    temporary = None
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{destination.name}.partial-{os.getpid()}-"
        if folder:
            temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=prefix))
        else:
            handle, name = tempfile.mkstemp(dir=destination.parent, prefix=prefix, suffix=".tmp")
            os.close(handle)
            temporary = Path(name)
        yield temporary
        apply_umask(temporary)
        _swap_in(temporary, destination, overwrite=overwrite, recognise=recognise, folder=folder, where=where)
    except OSError as exc:
        failure = _write_failure(exc, destination, temporary, where)
        if failure is None:
            raise
        raise failure from None
    finally:
        if temporary is not None and os.path.lexists(temporary):
            _remove(temporary)


def atomic_folder(destination: PathLike, *, overwrite: bool = False, recognise: Optional[Recogniser] = None,
                  where: str = "output folder") -> contextlib.AbstractContextManager[Path]:
    """A hidden temporary folder (``with atomic_folder(...) as tmp:``) that becomes ``destination`` only if the
    block finishes."""
    return _staged(destination, folder=True, overwrite=overwrite, recognise=recognise, where=where)


def atomic_file(destination: PathLike, write: Callable[[Path], None], *, overwrite: bool = False,
                recognise: Optional[Recogniser] = None, where: str = "output file") -> Path:
    """Write a file with ``write(temporary_path)`` and move it to ``destination`` under the same rules."""
    with _staged(destination, folder=False, overwrite=overwrite, recognise=recognise, where=where) as temporary:
        write(temporary)
    return Path(destination)
