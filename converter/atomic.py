"""Writing outputs whole or not at all, and never over an input.

A file is written to a temporary file in the same folder, then renamed;
several files (a folder of predictions and a report) are written to a
temporary folder inside the destination, then moved in once all of them
are done. A failure at any point leaves no partial output behind; files get
the usual permissions (0666 less the umask), not a temporary file's
owner-only mode.

Temporary names are ``.NAME.<pid>.<random>.tmp``. One left by a process that
no longer runs (killed mid-write) is removed by the next write of the same
name; so is one without a process id (an older version's) once it is an
hour old.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from .errors import UserError

STALE_AFTER_S = 3600  # temporary files that name no process count as abandoned after this long
_OUTPUTS = "outputs"  # the temporary folder's NAME in a destination folder


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise UserError("is a folder: give a file name to write", path)
    try:
        _make_folder(path.parent, path)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write here: {exc.strerror or exc}", path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write: {exc.strerror or exc}", path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_folder(folder: Path, output: Path) -> None:
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write here: {parent} is a file, not a folder", output)
            break
    folder.mkdir(parents=True, exist_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def staged_outputs(folder: str | Path) -> Iterator[Path]:
    """A temporary folder inside ``folder`` to write into; its files move to ``folder`` when the block succeeds.

    Subfolders merge into those of ``folder``; files of the same name are
    replaced. When the block fails, nothing of it is left, and ``folder``
    itself is removed again if the block created it and it is empty.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError("is a file: give a folder for the outputs", folder)
    created = not folder.exists()
    try:
        _make_folder(folder, folder)
        remove_stale_temporaries(folder, _OUTPUTS)
        staging = Path(tempfile.mkdtemp(prefix=f".{_OUTPUTS}.{os.getpid()}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise UserError(f"cannot write here: {exc.strerror or exc}", folder) from None
    try:
        yield staging
        try:
            for source in sorted(staging.rglob("*")):
                target = folder / source.relative_to(staging)
                if source.is_dir():
                    target.mkdir(exist_ok=True)
                else:
                    os.chmod(source, 0o666 & ~_umask())
                    os.replace(source, target)
        except OSError as exc:
            raise UserError(f"cannot write: {exc.strerror or exc}", exc.filename or folder) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove ``.NAME.*.tmp`` files and folders in ``folder`` that no running process is writing; returns them."""
    removed = []
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:(\d+)\.)?[a-z0-9_]+\.tmp")  # mkstemp's random part
    try:
        candidates = [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for candidate in candidates:
        pid = pattern.fullmatch(candidate.name).group(1)
        try:
            abandoned = not _running(int(pid)) if pid else time.time() - candidate.stat().st_mtime > STALE_AFTER_S
            if abandoned:
                if candidate.is_dir():
                    shutil.rmtree(candidate)
                else:
                    candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a number no process could have: leave it
    return True


def refuse_overwriting_inputs(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path | None]) -> None:
    """A one-line error when an output path names one of the command's input files."""
    given = [Path(p) for p in inputs if p]
    for out in (Path(p) for p in outputs if p):
        for source in given:
            if _same_file(out, source):
                raise UserError(f"is also an input of this command ({source}); writing it would destroy that "
                                "input: give another output name", out)  # fmt: skip


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
