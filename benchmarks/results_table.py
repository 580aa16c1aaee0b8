"""Result rows shared by the benchmarks: one JSON line per finished run, printed as mean ± std.

Each finished run is appended to ``results.jsonl`` at once, so an interrupted benchmark keeps its
results and ``--resume`` can skip them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_rows(results: Path, resume: bool) -> list[dict]:
    """The rows already in ``results`` when resuming; otherwise start an empty file."""
    if resume and results.exists():
        return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("")
    return []


def append_row(results: Path, row: dict) -> None:
    """Append one finished run to ``results`` and echo it."""
    with results.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def mean_std(values: list[float]) -> str:
    """``0.812 ± 0.013`` over seeds (sample std), the value alone for one seed, ``-`` for none.

    >>> mean_std([0.8, 0.9]), mean_std([0.5]), mean_std([])
    ('0.850 ± 0.071', '0.500', '-')
    """
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
