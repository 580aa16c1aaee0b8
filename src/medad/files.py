"""Files written whole or not at all, and tensor files read without running code.

:func:`atomic_files` writes each file to a temporary name beside it, fsyncs it, and renames all
of them over their targets only once every one is complete, so that a reader finds the old set
or the new one. A write that fails — a full disk — removes the temporary files, leaves the old
ones as they were and raises :class:`WriteError`, one line naming the file. :func:`load_tensors`
is medad's one ``torch.load`` (``weights_only=True``), with one-line errors for a file that holds
pickled objects or is no tensor file at all; :func:`read_json` and :func:`unreadable_arrays` do
the same for JSON and ``.npz`` files. torch is imported only by :func:`load_tensors`, so that the
config (which writes through this module) loads without it.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_files() as files:
...     digest = files.write(d / "a.txt", lambda fh: fh.write(b"hello"))
>>> (d / "a.txt").read_text(), digest[:12]
('hello', '2cf24dba5fb0')
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


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


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (its type name if it has none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AtomicFiles:
    """The files of one :func:`atomic_files` block, written to temporary names until it ends."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary file, target)

    def write(self, path: str | Path, write: Callable[[BinaryIO], Any]) -> str:
        """Write ``path`` through ``write(fh)`` to a temporary file beside it; its SHA-256."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise write_error(path, exc) from exc
        self.pending.append((Path(tmp), path))
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, RuntimeError) as exc:
            raise write_error(path, exc) from exc
        return sha256_file(tmp)


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_files() as files:
        files.write(path, lambda fh: fh.write(text.encode("utf-8")))


def unreadable_arrays(exc: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, in a few words: numpy takes anything that is
    no ``.npy`` / ``.npz`` for a pickle and advises loading it unsafely, which is not repeated."""
    return "damaged, or holding pickled Python objects, which medad does not load" if "pickle" in str(exc) \
        else one_line(exc)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a missing or unreadable file or invalid JSON raises one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def load_tensors(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers of them;
    no code in the file runs. A file with pickled objects, or one that is no tensor file, raises
    ``ValueError`` in one line naming it (not torch's advice to load it unsafely)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, KeyError, RuntimeError ... on foreign or cut files
        refused = isinstance(exc, pickle.UnpicklingError)  # its text advises loading unsafely: not repeated
        if refused and (found := re.search(r"GLOBAL (\S+)", str(exc))):
            raise ValueError(f"{path} holds pickled Python objects ({found.group(1)}), which medad does not load: "
                             "it reads tensors and plain values only (save a state_dict, not a module)") from None
        reason = one_line(exc)
        if refused:  # e.g. "Unsupported operand 110": the bytes are no pickle of tensors
            detail = re.search(r"Unsupported [^\n]*", str(exc))
            reason = detail.group(0) if detail else "an unreadable pickle"
        cause = None if refused else exc
        raise ValueError(f"{path} is not a PyTorch tensor file or is damaged ({reason})") from cause
