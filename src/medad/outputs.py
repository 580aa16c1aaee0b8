"""A folder a command writes many files into (``medad predict --out``), with a record of them.

:meth:`OutputFolder.claim` refuses a folder that already holds anything (besides medad's
``.lock``) unless ``overwrite``; with ``overwrite`` it first deletes the files an earlier run of
the command recorded writing there, so that the outputs of two runs never mix, and never a file
medad did not write. Every path handed out by :meth:`OutputFolder.path` is appended to the
record (``.medad-<command>``, one path a line as a JSON string, relative to the folder) *before*
the file is written, so that even the files of an interrupted or killed run are found again, with the
temporaries an interrupted :func:`medad.atomic.atomic_file` left beside them.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> _ = (root / "notes.txt").write_text("mine")
>>> with OutputFolder(root, "predict") as out:
...     out.claim(overwrite=True)
...     _ = out.path("heatmaps/a.png").write_bytes(b"")
>>> with OutputFolder(root, "predict") as out:
...     out.claim(overwrite=True)
>>> sorted(p.name for p in root.iterdir())
['notes.txt']
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType
from typing import TextIO

from medad.atomic import leftovers
from medad.runlock import LOCK_NAME

log = logging.getLogger("medad")


class OutputFolder:
    """The output folder ``root`` of ``command``; use as a context manager (closes the record)."""

    def __init__(self, root: str | Path, command: str):
        self.root = Path(root)
        self.record = self.root / f".medad-{command}"
        self._record: TextIO | None = None

    def claim(self, overwrite: bool) -> None:
        """Refuse a folder holding anything but the record and the lock unless ``overwrite``; delete
        what the record lists (see the module docstring) and name, in a warning, what is kept.
        Creates the folder."""
        held = sorted(p.name for p in self.root.iterdir() if p.name not in (LOCK_NAME, self.record.name)) \
            if self.root.is_dir() else []
        if held and not overwrite:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise FileExistsError(f"--out {self.root} is not empty ({shown}): pass --overwrite to replace the files "
                                  "medad wrote there (other files are kept), or choose another --out")
        self.clear()  # with overwrite; or a record left alone in the folder, which would only mislead the next
        kept = sorted(p.name for p in self.root.iterdir() if p.name != LOCK_NAME) if held else []
        if kept:  # a user's files, or outputs of a medad that kept no record: they may mix with this run's
            log.warning("%s: keeping %s, which medad did not record writing there", self.root, ", ".join(kept))
        self.root.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Delete the recorded files (and temporaries left beside them), then the folders this
        leaves empty, then the record."""
        if not self.record.is_file():
            return
        top = self.root.resolve()
        deleted, folders = 0, set()
        for line in self.record.read_text(encoding="utf-8").splitlines():
            try:
                path = self.root / json.loads(line)
            except (ValueError, TypeError):  # a line cut by a killed run, or not ours
                continue
            if path.resolve() == top or not path.resolve().is_relative_to(top):
                continue  # not a file inside the folder: never touched
            for found in [path, *leftovers(path)]:
                if found.is_file() and not found.is_symlink():
                    found.unlink()
                    deleted += 1
            folders.update(p for p in path.parents if p.resolve() != top and p.resolve().is_relative_to(top))
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.record.unlink()
        log.info("%s: deleted the %d files medad wrote there before", self.root, deleted)

    def path(self, relative: str | Path) -> Path:
        """``root / relative``, recorded, with its folders created; write it next."""
        if self._record is None:
            self._record = open(self.record, "a", encoding="utf-8")
        self._record.write(json.dumps(Path(relative).as_posix()) + "\n")
        self._record.flush()
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None
