"""Benchmark: pre-training throughput and loss with 1 process against N (issue 13 item 5).

Runs ``medad train`` with the ``chest-xray`` preset's method (contrastive, 64 px; its Mahalanobis
score only, without the fused DAE, whose training is not pre-training) on PneumoniaMNIST for a
few epochs, once in one process (all cores as intra-op threads) and once
with ``--nproc N`` (torchrun, gloo, one thread per process), same global batch and seed, and
prints the epochs' images/s (after the first, warm-up epoch) and loss curves side by side. On a
2-core CPU the two use the same cores, so the figure shows the overhead (or gain) of DDP, not the
scaling a multi-GPU or multi-node run gets.

    .venv/bin/python benchmarks/ddp_speed.py [--nproc 2] [--epochs 3] [--width 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def run(nproc: int, epochs: int, width: int, out: Path) -> tuple[list[dict], float]:
    command = [sys.executable, "-m", "medad", "-q", "train", "--preset", "chest-xray",
               "--data", str(DATA / "pneumoniamnist.npz"), "--out", str(out), "--epochs", str(epochs),
               "--set", f"encoder.width={width}", "--set", "train.select_by=last", "--no-progress",
               "--set", "detector.also=[nnd, lh]", "--set", "detector.fuse=[]",
               "--nproc", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - t0
    return json.loads((out / "model" / "model.json").read_text())["history"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run(n, args.epochs, args.width, Path(tmp) / f"p{n}") for n in (1, args.nproc)}
    print(f"contrastive, PneumoniaMNIST 64 px, ResNet-18 width {args.width}, batch 64 (global), {args.epochs} epochs")
    print("| processes | images/s (epochs 2+) | loss per epoch | wall time of the run (s) |")
    print("|---|---|---|---|")
    for n, (history, seconds) in results.items():
        rate = sum(h["images_per_second"] for h in history[1:]) / max(len(history) - 1, 1)
        losses = ", ".join(f"{h['loss']:.3f}" for h in history)
        print(f"| {n} | {rate:.1f} | {losses} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
