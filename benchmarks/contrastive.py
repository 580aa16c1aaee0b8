"""Benchmark: contrastive pre-training + Mahalanobis / S_NND / S_LH on real data (CPU).

Trains ``contrastive`` on PneumoniaMNIST (official test split: 234 normal / 390 pneumonia) and on
``lgg_brain_mri_dev`` (patient-split brain MRI, 441 normal / 279 tumour test slices), both at 64 px,
and prints image AUROC/AP of all three scores, train time and training images/s. Each dataset is
also scored with the same encoder left untrained (``epochs = 0``): the reference that says how much
the contrastive pre-training itself contributes. For LGG it also
prints AUROC on a position-matched subset (test normals with ``brain_frac >= 0.3``), because
tumour-free slices come more often from the top and bottom of the head.

Thresholds come from validation normals only; nothing is tuned on the test split.

    .venv/bin/python benchmarks/contrastive.py [--epochs 30] [--width 64] [--only pneumoniamnist|lgg]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from medad.config import RunConfig
from medad.pipeline import train_run

from lgg_position import position_matched_auroc  # noqa: E402  (benchmarks/ is on sys.path)

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def config(path: Path, channels: int, epochs: int, width: int) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"path": str(path), "image_size": 64, "channels": channels, "val_fraction": 0.1},
            "encoder": {"width": width},
            "method": {"name": "contrastive"},
            "detector": {"name": "mahalanobis", "also": ["nnd", "lh"]},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "seed": 0, "progress": False},
        }
    )


def run_one(name: str, path: Path, channels: int, epochs: int, width: int, out: Path) -> dict:
    """Train (or, with ``epochs=0``, only fit the scores on the untrained encoder) and summarise."""
    t0 = time.perf_counter()
    run_dir = out / (name if epochs else f"{name}-untrained")
    metrics = train_run(config(path, channels, epochs, width), run_dir, overwrite=True)
    history = json.loads((run_dir / "model" / "model.json").read_text())["history"]
    row = {
        "dataset": name if epochs else f"{name} (untrained)",
        "epochs": epochs,
        "n_train": metrics["n_train"],
        "test": f"{metrics['n_test_normal']}/{metrics['n_test_abnormal']}",
        **{f"auroc_{k}": v["image_auroc"] for k, v in metrics["scores"].items()},
        **{f"ap_{k}": v["image_ap"] for k, v in metrics["scores"].items()},
        "sens@thr": metrics["sensitivity"],
        "spec@thr": metrics["specificity"],
        "train_s": metrics["train_seconds"],
        "img_per_s": float(np.mean([h["images_per_second"] for h in history])) if history else float("nan"),
        "total_s": time.perf_counter() - t0,
    }
    if name == "lgg":
        matched = position_matched_auroc(run_dir, path / "manifest.csv")
        row.update({f"auroc_{k}_posmatched": v for k, v in matched.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--only", choices=["pneumoniamnist", "lgg"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    jobs = {
        "pneumoniamnist": (DATA / "pneumoniamnist.npz", 1),
        "lgg": (DATA / "lgg_brain_mri_dev", 3),
    }
    rows = []
    for name, (path, channels) in jobs.items():
        if args.only and args.only != name:
            continue
        for epochs in (args.epochs, 0):
            rows.append(run_one(name, path, channels, epochs, args.width, args.out))
            print(json.dumps(rows[-1], indent=1), flush=True)

    print(f"\ncontrastive pre-training, 64 px, ResNet-18 width {args.width}, {args.epochs} epochs, CPU")
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "dataset"))
    for key in keys:
        cells = [f"{r.get(key):.4f}" if isinstance(r.get(key), float) else str(r.get(key, "")) for r in rows]
        print(f"{key:>28} " + " ".join(f"{c:>27}" for c in cells))
    print(f"{'dataset':>28} " + " ".join(f"{r['dataset']:>27}" for r in rows))


if __name__ == "__main__":
    main()
