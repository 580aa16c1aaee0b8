"""Benchmark helper: how well trivial image statistics alone separate a MedMNIST test split.

A reference point for reading the other benchmarks: if a statistic such as the image's mean
intensity or its amount of fine detail already separates normal from abnormal test images, a
detector can score well (or below chance) through that statistic instead of the lesion. Printed
per dataset: test AUROC (abnormal = positive) of the mean intensity, the intensity standard
deviation and the mean absolute vertical gradient of the images as stored (28 px). No training.

    .venv/bin/python benchmarks/trivial_features.py [--datasets pneumoniamnist breastmnist]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medad.data.medmnist import load_medmnist

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mean, standard deviation and mean absolute vertical gradient of ``[N, H, W(, C)]``."""
    x = images.astype(np.float64) / 255.0
    flat = x.reshape(len(x), -1)
    return {"mean_intensity": flat.mean(1), "intensity_std": flat.std(1),
            "vertical_gradient": np.abs(np.diff(x, axis=1)).reshape(len(x), -1).mean(1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist"])
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    print(f"{'dataset':<16}{'statistic':<20}{'test AUROC':>12}")
    for name in args.datasets:
        data = load_medmnist(DATA / f"{name}.npz")
        labels = (data.labels["test"] != data.normal_label).astype(int)
        for stat, values in statistics(data.images["test"]).items():
            print(f"{name:<16}{stat:<20}{roc_auc_score(labels, values):>12.3f}")


if __name__ == "__main__":
    main()
