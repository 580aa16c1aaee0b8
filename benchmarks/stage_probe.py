"""Which stage of a trained encoder carries the anomaly signal? The embedding scores per ResNet stage.

For each saved run (a run folder with ``model/``) this fits medad's ``mahalanobis`` (raw features,
Ledoit–Wolf covariance), ``nnd`` (S_NND) and ``lh`` (S_LH) detectors with ``layer`` set to each
ResNet stage in turn (the spatial mean of ``layer1`` .. ``layer4``; ``layer4`` is the encoder's
own embedding) over the run's training normals, and prints the test image AUROC of each beside
the run's saved scores. When the run fuses scores (``detector.fuse``), it also prints the fusion
with each stage score added to the run's members, and put in place of the first fused member,
each standardised on the run's validation normals as the product does (``detectors/fusion.py``).
It reads the run's own data (``config.yaml``), so it needs the labelled test split of that data.
No training; seconds to a minute per run on a CPU.

A diagnostic: it tells whether what the pre-training learned sits in the deep embedding the
detectors use by default, or only in the early, low-level layers. A stage that wins on every dev
set is a product setting, e.g. ``--set detector.params.layer=layer1`` (docs/benchmarks.md).

    .venv/bin/python benchmarks/stage_probe.py RUN [RUN ...] [--tta 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.data.loading import DatasetSplits, load_splits
from medad.detectors.fusion import fit_fusion, fuse_scores
from medad.detectors.registry import build_detector
from medad.evaluation.records import ResultSet
from medad.model import AnomalyDetector
from medad.models.resnet import LAYERS

SCORES = ("mahalanobis", "nnd", "lh")


Scores = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per name: (validation-normal scores, test scores)."""


def stage_scores(model: AnomalyDetector, splits: DatasetSplits, tta: int = 0) -> dict[str, Scores]:
    """``{score: {stage: (validation-normal scores, test scores)}}`` of ``model``'s encoder, each
    score averaged over ``tta`` augmented views besides the image (``detector.params.tta``)."""
    train, val, test = (model.prepare(s) for s in (splits.train, splits.val, splits.test))
    out: dict[str, Scores] = {name: {} for name in SCORES}
    for layer in LAYERS:
        cache: dict = {}  # one forward pass per stage and image set, shared by the three scores
        for name in SCORES:
            detector = build_detector(name, {"layer": layer, "tta": tta}).fit(train, model.encoder_, cache)
            out[name][layer] = tuple(detector.score(x, model.encoder_, cache).scores.numpy() for x in (val, test))
    return out


def fused_auroc(members: Scores, labels: np.ndarray) -> float:
    """Test AUROC of the mean of ``members``, each standardised on its validation-normal scores."""
    stats = fit_fusion({k: torch.from_numpy(v) for k, (v, _) in members.items()})
    return float(roc_auc_score(labels, fuse_scores({k: torch.from_numpy(t) for k, (_, t) in members.items()},
                                                   stats).numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tta", type=int, default=0, help="augmented views per image (detector.params.tta)")
    args = parser.parse_args()
    for run in args.runs:
        model = AnomalyDetector.load(run)
        splits = load_splits(model.config.data, model.config.train.seed)
        if splits.test is None:
            raise SystemExit(f"{run}: its data has no test split")
        results = ResultSet.load(run / "predictions.npz")
        saved, val = results.with_role("test"), results.with_role("val")
        if [r.id for r in saved] != list(splits.test.ids):
            raise SystemExit(f"{run}: predictions.npz does not hold its data's test split in order")
        labels = saved.labels()
        stages = stage_scores(model, splits, args.tta)
        print(f"{run}\n  the run's scores: " + "  ".join(
            f"{k} {roc_auc_score(labels, saved.scores(k)):.3f}" for k in saved.score_names()))
        for name, per_stage in stages.items():
            print(f"  {name:12s} " + "  ".join(f"{layer} {roc_auc_score(labels, t):.3f}"
                                                for layer, (_, t) in per_stage.items()))
        fuse = model.config.detector.fuse
        if fuse:
            own = {k: (val.scores(k), saved.scores(k)) for k in fuse}
            others = {k: own[k] for k in fuse[1:]}  # the members but the first
            print(f"  fusion of {' + '.join(fuse)}: {fused_auroc(own, labels):.3f}; with each stage score")
            for name, per_stage in stages.items():
                # keyed "<score>@<stage>", so that a stage score never replaces a member of the same name
                added = [fused_auroc({**own, f"{name}@{layer}": v}, labels) for layer, v in per_stage.items()]
                swapped = [fused_auroc({**others, f"{name}@{layer}": v}, labels) for layer, v in per_stage.items()]
                print(f"  {name:12s} added    " + "  ".join(f"{a:.3f}" for a in added)
                      + f"\n  {'':12s} instead  " + "  ".join(f"{s:.3f}" for s in swapped))


if __name__ == "__main__":
    main()
