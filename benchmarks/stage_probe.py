"""Which stage of a trained encoder carries the anomaly signal? A Mahalanobis probe per ResNet stage.

For each saved run (a run folder with ``model/``) this fits medad's ``mahalanobis`` detector (raw
features, Ledoit–Wolf covariance) with ``layer`` set to each ResNet stage in turn (the spatial mean
of ``layer1`` .. ``layer4``; ``layer4`` is the encoder's own embedding) over the run's training
normals, and prints the test image AUROC of each stage beside the run's saved scores.
It reads the run's own data (``config.yaml``), so it needs the labelled test split of that data.
No training; seconds per run on a CPU.

A diagnostic: it tells whether what the pre-training learned sits in the deep embedding the
detectors use by default, or only in the early, low-level layers. A stage that wins is a product
setting, e.g. ``--set detector.params.layer=layer1``.

    .venv/bin/python benchmarks/stage_probe.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.metrics import roc_auc_score

from medad.data.loading import load_splits
from medad.detectors.gaussian import MahalanobisDetector
from medad.evaluation.records import ResultSet
from medad.model import AnomalyDetector
from medad.models.resnet import LAYERS


def probe(run: Path) -> dict[str, float]:
    """Test image AUROC of the Mahalanobis distance on each stage's pooled features of ``run``."""
    model = AnomalyDetector.load(run)
    splits = load_splits(model.config.data, model.config.train.seed)
    if splits.test is None:
        raise SystemExit(f"{run}: its data has no test split")
    train, test = model.prepare(splits.train), model.prepare(splits.test)
    labels = splits.test.labels.numpy()
    out = {}
    for layer in LAYERS:
        detector = MahalanobisDetector(layer=layer).fit(train, model.encoder_)
        scores = detector.score(test, model.encoder_).scores
        out[layer] = float(roc_auc_score(labels, scores.numpy()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        saved = ResultSet.load(run / "predictions.npz").with_role("test")
        saved_auroc = {n: roc_auc_score(saved.labels(), saved.scores(n)) for n in saved.score_names()}
        stages = probe(run)
        print(f"{run}\n  stages (Mahalanobis on pooled features): "
              + "  ".join(f"{k} {v:.3f}" for k, v in stages.items())
              + "\n  the run's scores: " + "  ".join(f"{k} {v:.3f}" for k, v in saved_auroc.items()))


if __name__ == "__main__":
    main()
