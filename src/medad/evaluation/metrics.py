"""Image- and pixel-level metrics and label-free thresholds (pure numpy / scikit-learn).

Abnormal (label 1) is the positive class; higher scores mean more anomalous; an image is
predicted abnormal when its score is strictly greater than the threshold.

>>> import numpy as np
>>> m = image_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), threshold=0.3)
>>> m["image_auroc"], m["sensitivity"], m["specificity"]
(0.75, 1.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _finite(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """``values`` as a float64 array; ValueError naming how many are NaN or infinite."""
    x = np.asarray(values, dtype=np.float64)
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if n_nan or n_inf:
        raise ValueError(f"{what}: {n_nan} NaN and {n_inf} infinite value(s) among {x.size}")
    return x


def _binary_labels(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Labels as an int array of length ``n`` containing both 0 and 1 and nothing else."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (abnormal), got values {sorted(set(y.tolist()))}")
    n_abnormal = int(y.sum())
    if n_abnormal in (0, n):
        raise ValueError(
            f"AUROC needs both normal and abnormal images, got {n - n_abnormal} normal and {n_abnormal} abnormal"
        )
    return y.astype(np.int64)


def image_metrics(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> dict[str, float | int]:
    """AUROC, average precision, and sensitivity/specificity/accuracy of ``score > threshold``."""
    s = _finite(scores, "scores").ravel()
    y = _binary_labels(labels, s.size)
    pred = s > threshold
    abnormal, normal = y == 1, y == 0
    return {
        "image_auroc": float(roc_auc_score(y, s)),
        "image_ap": float(average_precision_score(y, s)),
        "sensitivity": float(pred[abnormal].mean()),
        "specificity": float((~pred[normal]).mean()),
        "accuracy": float((pred == abnormal).mean()),
        "n_test_normal": int(normal.sum()),
        "n_test_abnormal": int(abnormal.sum()),
    }


def quantile_threshold(val_normal_scores: Sequence[float] | np.ndarray, q: float) -> tuple[float, str]:
    """The ``q``-quantile (linear interpolation) of validation-normal scores, and the rule's name.

    >>> quantile_threshold([0.0, 1.0, 2.0, 3.0, 4.0], 0.95)
    (3.8, 'val_normal_q0.95')
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    s = _finite(val_normal_scores, "validation scores").ravel()
    if s.size == 0:
        raise ValueError("no validation-normal scores to set a threshold from")
    return float(np.quantile(s, q)), f"val_normal_q{q:g}"


def youden_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on a *labelled validation* set.

    Candidates are the midpoints between adjacent distinct scores; ties go to the lowest
    threshold (the most sensitive). Meant only for the optional labelled-validation protocol:
    choosing a threshold on test labels would overstate performance.

    >>> youden_threshold([0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1])
    0.4
    """
    s = _finite(scores, "scores").ravel()
    y = _binary_labels(labels, s.size)
    distinct = np.unique(s)
    if distinct.size == 1:  # every threshold separates nothing
        return float(distinct[0])
    candidates = (distinct[:-1] + distinct[1:]) / 2
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = 1.0 - np.searchsorted(pos, candidates, side="right") / pos.size
    fpr = 1.0 - np.searchsorted(neg, candidates, side="right") / neg.size
    return float(candidates[np.argmax(tpr - fpr)])


def pixel_auroc(
    maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray | None],
    labels: Sequence[int] | np.ndarray | None = None,
) -> float:
    """AUROC over all pixels of the images that have pixel ground truth.

    ``masks[i]`` is the ``[H, W]`` lesion mask of ``maps[i]`` (non-zero = lesion) or ``None``.
    An image without a mask counts as an all-zero mask — the convention for normal test
    images — unless ``labels`` marks it abnormal (1) or unknown (-1), in which case it is left out.

    >>> maps = [np.array([[0.0, 0.9]]), np.array([[0.1, 0.2]])]
    >>> pixel_auroc(maps, [np.array([[0, 1]]), None], labels=[1, 0])
    1.0
    """
    if len(masks) != len(maps) or (labels is not None and len(labels) != len(maps)):
        n_labels = "no" if labels is None else len(labels)
        raise ValueError(f"got {len(maps)} maps, {len(masks)} masks and {n_labels} labels")
    values, truth = [], []
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        amap = _finite(amap, f"anomaly map {i}")
        if mask is None:
            if labels is not None and labels[i] != 0:
                continue
            mask = np.zeros(amap.shape, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != amap.shape:
            raise ValueError(f"mask {i} has shape {mask.shape} but its anomaly map has shape {amap.shape}")
        values.append(amap.ravel())
        truth.append(mask.ravel() != 0)
    if not values:
        raise ValueError("no image has pixel ground truth")
    y = np.concatenate(truth)
    if y.all() or not y.any():
        raise ValueError("pixel AUROC needs both lesion and non-lesion pixels")
    return float(roc_auc_score(y, np.concatenate(values)))
