"""Result rows shared by the benchmarks: one JSON line per finished run, printed as mean ± std.

Each finished run is appended to ``results.jsonl`` at once, so an interrupted benchmark keeps its
results and ``--resume`` can skip them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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


def run_path(out: Path, dataset: str, name: str, seed: int) -> Path:
    """Where a benchmark keeps one run: ``OUT/<dataset>-<method or variant>-s<seed>``."""
    return out / f"{dataset}-{name}-s{seed}"


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


def print_table(rows: list[dict], datasets: Iterable[str], key: str, values: Iterable[str],
                columns: Sequence[str], width: int = 19) -> None:
    """One line per (dataset, ``row[key]``) that has rows: the number of seeds and mean ± std of
    every column over them (missing values skipped); columns are at least ``width`` wide."""
    values = list(values)
    widths = [max(width, len(c) + 2) for c in columns]
    print(f"{'dataset':<15}{key:<20}{'seeds':<6}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for dataset in datasets:
        for value in values:
            group = [r for r in rows if r["dataset"] == dataset and r[key] == value]
            if group:
                cells = [mean_std([r[c] for r in group if r.get(c) is not None]) for c in columns]
                print(f"{dataset:<15}{value:<20}{len(group):<6}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
