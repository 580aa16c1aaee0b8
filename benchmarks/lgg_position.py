"""LGG slice-position control shared by the benchmarks.

Tumour-free LGG slices come more often from the top and bottom of the head and tumour slices from
mid-brain, so a detector can look good (or bad) by recognising slice position. The position-matched
AUROC keeps every tumour slice but only the test normals whose ``brain_frac`` (share of the slice
covered by brain, from the dataset's ``manifest.csv``) is at least ``min_frac``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sklearn.metrics import roc_auc_score

from medad.evaluation.records import ResultSet


def position_matched_auroc(run_dir: Path, manifest: Path, min_frac: float = 0.3) -> dict[str, float]:
    """AUROC of each score using only test normals with brain_frac >= min_frac (all tumours kept);
    with the default 0.3, 350 of the 441 test normals of ``lgg_brain_mri_dev`` remain."""
    with open(manifest) as fh:
        frac = {row["file"]: float(row["brain_frac"]) for row in csv.DictReader(fh)}
    test = ResultSet.load(run_dir / "predictions.npz").with_role("test")
    keep = [
        i for i, r in enumerate(test)
        if r.label == 1 or frac["/".join(Path(r.id).parts[-3:])] >= min_frac  # KeyError: not in the manifest
    ]
    labels = test.labels()[keep]
    return {name: float(roc_auc_score(labels, test.scores(name)[keep])) for name in test.score_names()}
