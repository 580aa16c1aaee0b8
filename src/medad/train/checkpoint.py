"""Atomic, pickle-free checkpoints: a tensor file loaded with ``weights_only=True`` plus JSON metadata.

>>> import tempfile, torch, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> save_checkpoint(d / "m.pt", {"w": torch.ones(2)}, {"epoch": 3})
>>> state, meta = load_checkpoint(d / "m.pt")
>>> state["w"].tolist(), meta["epoch"]
([1.0, 1.0], 3)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync, then rename over ``path``,
    so that readers see either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) and ``meta`` (JSON) atomically.

    The JSON file sits next to the tensor file with suffix ``.json``; it is written last, so a
    JSON file always describes a complete tensor file.
    """
    path = Path(path)
    _atomic_write(path, lambda fh: torch.save(state, fh))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint {path} (and {meta_path.name}) not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        meta = json.loads(meta_path.read_text())
    except Exception as exc:  # corrupt or foreign file: say which
        raise ValueError(f"cannot load checkpoint {path}: {exc}") from exc
    return state, meta
