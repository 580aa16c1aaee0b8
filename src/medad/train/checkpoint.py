"""Pickle-free checkpoints: a tensor file loaded with ``weights_only=True`` plus JSON metadata,
written together atomically and bound to each other.

The JSON file records the SHA-256 of the tensor file (``tensors_sha256``) and the tensor file
holds the SHA-256 of the JSON metadata in canonical form (key ``medad_json_sha256``), so that
editing either file after saving, or pairing files of two saves, is refused with one line naming
both — instead of a model that silently scores differently or torch's size-mismatch dump. Files
saved before the binding (no hash on either side) load with a warning (docs/architecture.md).

>>> import tempfile, torch, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> save_checkpoint(d / "m.pt", {"w": torch.ones(2)}, {"epoch": 3})
>>> state, meta = load_checkpoint(d / "m.pt")
>>> state["w"].tolist(), meta["epoch"]
([1.0, 1.0], 3)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medad.atomic import atomic_files
from medad.files import load_tensors, read_json, sha256_file

log = logging.getLogger("medad")

TENSORS_SHA256 = "tensors_sha256"
"""Key in the JSON file: the SHA-256 of the tensor file's bytes."""
META_SHA256 = "medad_json_sha256"
"""Key in the tensor file: the SHA-256 of the JSON metadata (without ``tensors_sha256``) in canonical form."""


class CheckpointMismatchError(ValueError):
    """A tensor file and its JSON file that were not saved together (or were edited after saving)."""


def _canonical_sha256(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) and ``meta`` (JSON) next to each
    other (``.json`` beside ``path``), each bound to the other by its hash. Both files replace the
    previous ones together or not at all: a full disk leaves the previous checkpoint as it was and
    raises :class:`~medad.atomic.WriteError`."""
    path = Path(path)
    meta = json.loads(json.dumps(meta))  # as it reads back (tuples become lists): what the hash covers
    bound = {**state, META_SHA256: _canonical_sha256(meta)}
    with atomic_files() as files:
        digest = files.write(path, lambda fh: torch.save(bound, fh))
        text = json.dumps({**meta, TENSORS_SHA256: digest}, indent=2, sort_keys=True)
        files.write(path.with_suffix(".json"), lambda fh: fh.write(text.encode("utf-8")))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata beside the tensor file ``path``; one-line errors for a missing file,
    invalid JSON or JSON that is not an object."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {Path(path).name} is not usable without it")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is not medad metadata (a JSON object), it holds a {type(meta).__name__}")
    return meta


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", check: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    ``check(meta)`` runs on the metadata before the tensor file is read (e.g. to refuse a newer
    format). A pair whose hashes disagree raises :class:`CheckpointMismatchError`; a pair saved
    before the hashes existed loads with a warning.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found" + (f" (beside {meta_path.name})" if meta_path.is_file() else ""))
    meta = read_metadata(path)
    if check is not None:
        check(meta)
    expected = meta.pop(TENSORS_SHA256, None)
    apart = f"{path} and {meta_path.name} do not belong together"
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointMismatchError(f"{apart}: {path.name} was changed after saving, or the two come from "
                                      "different saves; use both files of one save")
    state = load_tensors(path, map_location)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a medad checkpoint (a mapping of tensors), it holds a {type(state).__name__}")
    bound = state.pop(META_SHA256, None)
    if bound is None and expected is None:
        log.warning("%s and %s were saved without the hashes that tie them together (an older medad): an edit "
                    "to either cannot be detected; save them again to add the hashes", path, meta_path.name)
    elif bound != _canonical_sha256(meta):
        raise CheckpointMismatchError(f"{apart}: {meta_path.name} was edited after saving, or the two come from "
                                      "different saves; use both files of one save")
    return state, meta


def load_state(target: Any, state: dict[str, Any], path: str | Path, what: str) -> None:
    """``target.load_state_dict(state)`` (a module, optimiser or schedule); a state that does not
    fit raises ``ValueError`` in one line naming ``path``, ``what`` and the disagreement instead of
    torch's multi-line dump."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the saved {what} does not fit ({state_mismatch(exc)})") from exc


_SIZE = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                   r"the shape in current model is torch\.Size\((\[.*?\])\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)")


def state_mismatch(exc: BaseException, shown: int = 3) -> str:
    """torch's ``load_state_dict`` error in one line: the first ``shown`` missing and unexpected
    keys and shape mismatches, and how many more there are.

    >>> try:
    ...     torch.nn.Linear(2, 3).load_state_dict(torch.nn.Linear(2, 4).state_dict())
    ... except RuntimeError as exc:
    ...     print(state_mismatch(exc))
    weight is [4, 2] in the file but [3, 2] here; bias is [4] in the file but [3] here
    """
    parts, sizes = [], []
    for line in (line.strip() for line in str(exc).splitlines()):
        if size := _SIZE.match(line):
            sizes.append(f"{size[1]} is {size[2]} in the file but {size[3]} here")
        elif keys := _KEYS.match(line):
            names = re.findall(r'"([^"]+)"', keys[2])
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{keys[1].lower()} keys {', '.join(names[:shown])}{more}")
    if len(sizes) > shown:
        sizes = [*sizes[:shown], f"{len(sizes) - shown} more shapes differ"]
    return "; ".join(parts + sizes) or " ".join(str(exc).split())
