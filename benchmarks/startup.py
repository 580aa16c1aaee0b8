"""Benchmark: how long the command line takes to answer (issue 27, case 6).

Runs each command ``--runs`` times in a fresh ``python -m medad`` process and prints the median
and the minimum wall time. None of them trains anything: ``--help``, ``--version``, a config
error (``--image-size -3``, refused before any data is read) and ``medad list``. Pass
``--src DIR`` (repeatable) to time other source trees the same way, e.g. an older checkout's
``src`` exported with ``git archive``; the default is this checkout's ``src``.

    .venv/bin/python benchmarks/startup.py --runs 7
    git archive main src | tar -x -C /tmp/before
    .venv/bin/python benchmarks/startup.py --src /tmp/before/src --src src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "medad --help": ["--help"],
    "medad --version": ["--version"],
    "medad train --image-size -3 --data x --out y": ["train", "--image-size", "-3", "--data", "x", "--out", "y"],
    "medad list": ["list"],
}


def wall_times(src: Path, args: list[str], runs: int) -> list[float]:
    """Seconds of ``runs`` fresh ``python -m medad ARGS`` processes with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medad", *args], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--src", type=Path, action="append", help="source tree(s) to time (default: ./src)")
    args = parser.parse_args()
    sources = args.src or [Path(__file__).resolve().parents[1] / "src"]
    print(f"{args.runs} runs each, python {sys.version.split()[0]}")
    print("| source | command | median s | min s |")
    print("|---|---|---|---|")
    for src in sources:
        for label, command in COMMANDS.items():
            times = wall_times(src, command, args.runs)
            print(f"| {src} | `{label}` | {statistics.median(times):.2f} | {min(times):.2f} |")


if __name__ == "__main__":
    main()
