"""The test figures of a run, computed from its :class:`~medad.evaluation.records.ResultSet`.

:func:`detection_metrics` gives the primary score's image metrics at the label-free threshold and
every score's AUROC / AP; :func:`localisation_metrics` the pixel figures where maps and masks exist;
:func:`labelled_val_metrics` the papers' protocol with a threshold fitted on labelled validation
images, reported apart. ``medad.pipeline`` adds the run's bookkeeping and writes metrics.json.

>>> import numpy as np
>>> from medad.evaluation.records import ImageResult, ResultSet
>>> test = ResultSet([ImageResult(id=str(i), score=s, label=y, scores={"nnd": s})
...                   for i, (s, y) in enumerate([(0.1, 0), (0.9, 1), (0.2, 0), (0.7, 1)])])
>>> m = detection_metrics(test, threshold=0.5)
>>> m["image_auroc"], m["sensitivity"], m["scores"]["nnd"]["image_auroc"]
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.evaluation.metrics import image_metrics, pixel_auroc, youden_threshold
from medad.evaluation.pixel import oracle_dice, pro_score, segmentation_scores
from medad.evaluation.records import ResultSet


def detection_metrics(test: ResultSet, threshold: float | None) -> dict[str, Any]:
    """Image AUROC, AP and (with a ``threshold``) sensitivity, specificity and accuracy of the
    primary score over the labelled ``test`` results, and ``scores``: every score's AUROC and AP."""
    labels = test.labels()
    metrics = image_metrics(test.scores(), labels, threshold if threshold is not None else np.inf)
    if threshold is None:
        for key in ("sensitivity", "specificity", "accuracy"):
            metrics.pop(key)
    metrics["scores"] = {
        name: {k: v for k, v in image_metrics(test.scores(name), labels, np.inf).items()
               if k in ("image_auroc", "image_ap")}
        for name in test.score_names()
    }
    return metrics


def localisation_metrics(test: ResultSet, pixel_threshold: float | None = None, pixel_threshold_rule: str = "none",
                         min_region: int = 0) -> dict[str, Any]:
    """Pixel AUROC, PRO, and Dice / IoU at the label-free ``pixel_threshold`` (pooled over the test
    images with pixel ground truth: abnormal images with masks and normal images), plus the
    optimistic ``oracle_dice`` whose threshold is chosen on the test masks themselves; empty
    without an abnormal image that has a mask and a map."""
    known = [r for r in test if r.anomaly_map is not None and (r.mask is not None or r.label == 0)]
    if not any(r.mask is not None and r.label == 1 for r in known):
        return {}
    maps, masks = [r.anomaly_map for r in known], [r.mask for r in known]
    out: dict[str, Any] = {
        "pixel_auroc": pixel_auroc(maps, masks, labels=[r.label for r in known]),
        "pro": pro_score(maps, masks),
        "n_test_masks": sum(r.mask is not None for r in known),
    }
    if pixel_threshold is not None:
        out.update(segmentation_scores(maps, masks, pixel_threshold, min_region))
        out.update(pixel_threshold=pixel_threshold, pixel_threshold_rule=pixel_threshold_rule)
    out["oracle_dice"], out["oracle_dice_threshold"] = oracle_dice(maps, masks)
    return out


def labelled_val_metrics(val_scores: np.ndarray, val_labels: np.ndarray, test: ResultSet) -> dict[str, Any]:
    """The papers' protocol, reported apart: a Youden threshold fitted on a user-provided labelled
    validation set, then applied to the test scores. Never fitted on the test split."""
    threshold = youden_threshold(val_scores, val_labels)
    m = image_metrics(test.scores(), test.labels(), threshold)
    return {
        "threshold": threshold,
        "rule": "youden_on_labelled_val",
        "n_labelled_val": len(val_scores),
        **{k: m[k] for k in ("sensitivity", "specificity", "accuracy")},
    }
