"""One run folder, one run: an exclusive lock file taken atomically while a run writes its folder.

``RunLock(folder)`` creates ``folder/.lock`` with ``O_CREAT | O_EXCL`` (atomic on local file
systems and on NFS v3+), holding the owner's host, process id and start time. A second process
that wants the same folder fails at once with :class:`RunLockedError`, naming the owner. A lock
left behind by a process that died (same host, process gone) is stale: it is replaced with a
warning. A lock from another host is never taken over, since its owner cannot be checked; delete
the file by hand if that run is known to be dead.

>>> import tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> with RunLock(folder):
...     (folder / ".lock").exists()
True
>>> (folder / ".lock").exists()
False
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger("medad")

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """Context manager holding ``folder/.lock`` (the folder is created if needed)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # being written right now, or not a medad lock: treated as held

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, fh)
        return True

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            self.held = True
            return self
        owner = self._owner()
        stale = owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
            and not _alive(owner["pid"])
        if stale:
            log.warning("%s: removing the stale lock of process %d, which no longer runs", self.path, owner["pid"])
            self.path.unlink(missing_ok=True)
            if self._create():  # O_EXCL again: of two processes clearing the same stale lock, one wins
                self.held = True
                return self
            owner = self._owner()
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
        raise RunLockedError(
            f"{self.path.parent} is in use by another run ({who}); wait for it to finish or choose another --out "
            f"(if that process is dead, delete {self.path})"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
