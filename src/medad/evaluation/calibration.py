"""Calibrated scores: where an image's anomaly score falls among the validation normals' scores.

``normal_quantile(s)`` is the share of validation normals scoring below s (ties count half): 0.5
for a typical normal image, near 1 for an image more anomalous than every normal seen, whatever
the detector's raw scale. ``1 − normal_quantile`` is the empirical p-value of "this image is
normal" (inductive conformal anomaly detection, Laxhammar & Falkman 2015). The label-free
threshold at quantile q flags images with ``normal_quantile`` above about q.

>>> normal_quantile([0.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0])
array([0.   , 0.375, 1.   ])

The heatmap colour scale is calibrated the same way, once, on the validation normals
(:func:`normal_map_range`), so that a heatmap looks the same whatever else is predicted with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normal_quantile(scores: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray) -> np.ndarray:
    """Share of ``reference`` (validation-normal scores) below each of ``scores``, ties counting
    half; NaN scores stay NaN. Raises if ``reference`` is empty."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    if ref.size == 0:
        raise ValueError("no validation-normal scores to calibrate against (fit with val_fraction > 0)")
    s = np.asarray(scores, dtype=np.float64)
    below = np.searchsorted(ref, s, side="left")
    not_above = np.searchsorted(ref, s, side="right")
    out = (below + not_above) / (2.0 * ref.size)
    return np.where(np.isnan(s), np.nan, out)


def normal_map_range(maps: np.ndarray, low: float = 1.0, high: float = 99.9) -> tuple[float, float]:
    """The heatmap colour scale: the ``low`` and ``high`` percentiles of validation-normal pixel
    scores (normal tissue maps to the bottom of the scale, lesions saturate it).

    >>> normal_map_range(np.linspace(0, 1, 1001).reshape(1, 1001), 1, 99)
    (0.01, 0.99)
    """
    values = np.asarray(maps, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(max(hi, lo + 1e-12))
