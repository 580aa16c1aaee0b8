"""Files written whole or not at all: a temporary file beside each target, fsynced, then renamed
over it.

A reader, or a user looking at the folder, sees the old file or the new one, never half of one:
an interrupted or failed write (Ctrl-C, SIGTERM, a full disk, an error while the content is
produced) leaves nothing under the target's name. :func:`atomic_files` renames several files
together at the end of its block (a checkpoint's tensors and JSON), so that a reader finds the old
set or the new one. A write that fails for lack of space raises :class:`WriteError`, one line
naming the file and saying the previous one is unchanged. Only a hard kill (SIGKILL, power loss)
can leave a hidden temporary file ``.<name>.<random>.tmp`` (:func:`leftovers` finds them). Files
get the permissions ``open`` would give them (``0o666`` less the umask), not ``mkstemp``'s
``0o600``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
>>> with atomic_file(path, "w") as fh:
...     _ = fh.write("a,b\\n")
...     path.exists()
False
>>> path.read_text(), leftovers(path)
('a,b\\n', [])
>>> with atomic_files() as files:
...     digest = files.write(path.with_name("a.txt"), lambda fh: fh.write(b"hello"))
>>> digest[:12]
'2cf24dba5fb0'
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, BinaryIO

from medad.files import one_line, sha256_file

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (single-threaded), and put back


class WriteError(OSError):
    """A file could not be written (e.g. the disk is full); the previous version is unchanged."""


def write_error(path: Path, exc: BaseException) -> WriteError:
    """One line for a failed write of ``path``: the disk is full, or what else went wrong.
    torch reports a short write as a ``RuntimeError`` ("unexpected pos ..."), which says nothing
    to a user, so it is named as a failed write."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full (no space left on the device)"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = f"the write failed part-way ({one_line(exc)}); is the disk full?"
    error = WriteError(f"cannot write {path}: {reason}; the previous {path.name}, if any, is unchanged")
    error.errno = code
    return error


class AtomicFiles:
    """The files of one :func:`atomic_files` block, written to temporary names until it ends."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary file, target)

    @contextmanager
    def open(self, path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
        """A temporary file beside ``path`` (``mode``: ``"w"`` or ``"wb"``, ``open_args`` as for
        ``open``), flushed and fsynced when the block ends; a failure to create or finish it raises
        :class:`WriteError`. Errors raised inside the block pass unchanged (the block may do other
        work than writing this file: a caller says whose they are)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise write_error(path, exc) from exc
        self.pending.append((Path(tmp), path))
        fh = os.fdopen(fd, mode, **open_args)
        try:
            yield fh
        except BaseException:
            with suppress(OSError):  # the block's error is the one to report, not a flush of its half-written buffer
                fh.close()
            raise
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.chmod(tmp, 0o666 & ~_UMASK)
        except OSError as exc:
            with suppress(OSError):  # closes the descriptor even when the flush inside fails again
                fh.close()
            raise write_error(path, exc) from exc

    def write(self, path: str | Path, write: Callable[[BinaryIO], Any]) -> str:
        """Write ``path`` through ``write(fh)`` (e.g. ``torch.save``) to a temporary file beside
        it; its SHA-256. Every error of ``write`` is one of writing this file."""
        with self.open(path) as fh:
            try:
                write(fh)
            except (OSError, RuntimeError) as exc:  # RuntimeError: torch.save's short write ("unexpected pos")
                cause: BaseException = exc
                if isinstance(exc, RuntimeError):
                    try:  # the disk's own error says more than torch's
                        fh.flush()
                        os.fsync(fh.fileno())
                    except OSError as disk:
                        cause = disk
                raise write_error(Path(path), cause) from exc
        return sha256_file(self.pending[-1][0])


@contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Files written in this block replace their targets together at its end (renamed in the
    order written), or not at all when the block raises; no temporary file is left behind."""
    files = AtomicFiles()
    try:
        yield files
        for tmp, path in files.pending:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise write_error(path, exc) from exc
    finally:
        for tmp, _ in files.pending:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """One file written whole or not at all: :meth:`AtomicFiles.open` in its own
    :func:`atomic_files` block."""
    with atomic_files() as files, files.open(path, mode, **open_args) as fh:
        yield fh


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def leftovers(path: str | Path) -> list[Path]:
    """The temporary files an interrupted write of ``path`` left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))
