"""Benchmark: ``medad predict`` end to end against the model-only scoring rate (issue 13 item 1).

Fits PaDiM on an untrained encoder on ``lgg_brain_mri_dev`` (128 px, no pre-training: the
benchmark is about scoring, not accuracy), then on ``test/tumor`` (279 PNG files) measures

* the model-only rate: ``model.score_all`` of the primary score on the already prepared tensor;
* ``predict_run`` end to end (reading PNGs, scoring, scores.csv), with and without heatmaps.

    .venv/bin/python benchmarks/predict_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.prediction import predict_run

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    data = DATA / "lgg_brain_mri_dev"
    cfg = RunConfig.model_validate({
        "data": {"path": str(data), "image_size": 128, "channels": 3}, "method": {"name": "none"},
        "detector": {"name": "padim"}, "train": {"epochs": 0, "progress": False},
    })
    model = AnomalyDetector(cfg).fit(data / "train" / "good")
    folder = data / "test" / "tumor"
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        x = model.prepare(folder)
        model.score_all(x[:8], [model.primary])  # warm-up
        t0 = time.perf_counter()
        for part in x.split(64):
            model.score_all(part, [model.primary])
        model_only = len(x) / (time.perf_counter() - t0)
        print(f"{len(x)} images, {torch.get_num_threads()} threads")
        print("| path | images/s | share of model-only |")
        print("|---|---|---|")
        print(f"| model only (score_all on prepared tensors, batches of 64) | {model_only:.1f} | 1.00 |")
        for heatmaps in (False, True):
            t0 = time.perf_counter()
            predict_run(Path(tmp) / "model", [folder], Path(tmp) / f"pred{heatmaps}", heatmaps=heatmaps,
                        progress=False)
            rate = len(x) / (time.perf_counter() - t0)
            label = "predict_run, PNG files to scores.csv" + (" + heatmaps" if heatmaps else "")
            print(f"| {label} | {rate:.1f} | {rate / model_only:.2f} |")


if __name__ == "__main__":
    main()
