"""Files written whole or not at all: a temporary file beside the target, fsynced, then renamed
over it.

A reader, or a user looking at the folder, sees the old file or the new one, never half of one:
an interrupted or failed write (Ctrl-C, SIGTERM, a full disk, an error while the content is
produced) leaves nothing under the target's name. Only a hard kill (SIGKILL, power loss) can leave
the hidden temporary file ``.<name>.<random>.tmp`` (:func:`leftovers` finds them). The file gets
the permissions ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
>>> with atomic_file(path, "w") as fh:
...     _ = fh.write("a,b\\n")
...     path.exists()
False
>>> path.read_text(), leftovers(path)
('a,b\\n', [])
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (single-threaded), and put back


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode``: ``"w"`` or ``"wb"``, ``open_args`` as for
    ``open``); when the block ends without an exception, fsync it and rename it to ``path``;
    otherwise delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def leftovers(path: str | Path) -> list[Path]:
    """The temporary files an interrupted :func:`atomic_file` of ``path`` left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))
