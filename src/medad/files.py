"""Files read without running code, with one-line errors (writing: :mod:`medad.atomic`).

:func:`load_tensors` is medad's one ``torch.load`` (``weights_only=True``), with one-line errors
for a file that holds pickled objects or is no tensor file at all; :func:`read_json` and
:func:`unreadable_arrays` do the same for JSON and ``.npz`` files; :func:`sha256_file` hashes a
file. torch is imported only by :func:`load_tensors`, so that the config loads without it.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = path.write_text("hello")
>>> sha256_file(path)[:12]
'2cf24dba5fb0'
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any


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
