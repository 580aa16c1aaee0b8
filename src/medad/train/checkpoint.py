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
from pathlib import Path
from typing import Any

import torch

from medad.atomic import atomic_file, atomic_write_text


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) and ``meta`` (JSON) atomically.

    The JSON file sits next to the tensor file with suffix ``.json``; it is written last, so a
    JSON file always describes a complete tensor file.
    """
    path = Path(path)
    with atomic_file(path) as fh:
        torch.save(state, fh)
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
