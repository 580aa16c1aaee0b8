"""Localisation metrics on anomaly maps: PRO, Dice / IoU, and a label-free pixel threshold.

Inputs are one ``[H, W]`` anomaly map per image and its lesion mask (non-zero = lesion) or
``None`` for a normal image (an all-zero mask; leave out abnormal images that have no mask). A
pixel is predicted abnormal when its score is strictly greater than the threshold, as for images
in :mod:`medad.evaluation.metrics`. Connected components are 8-connected
(``scipy.ndimage.label`` with a 3x3 structure), as in the MVTec AD evaluation code.

>>> maps = [np.array([[0.9, 0.1], [0.2, 0.0]]), np.array([[0.3, 0.1], [0.0, 0.2]])]
>>> masks = [np.array([[1, 0], [0, 0]]), None]
>>> pro_score(maps, masks), segmentation_scores(maps, masks, threshold=0.5)
(1.0, {'dice': 1.0, 'iou': 1.0})
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid

from medad.evaluation.metrics import _finite, quantile_threshold

Maps = Sequence[np.ndarray] | np.ndarray
Masks = Sequence[np.ndarray | None]
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def _checked(maps: Maps, masks: Masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Float64 maps and boolean masks (``None`` -> all False); ValueError on NaN/Inf, mismatched
    counts or shapes, non-2-D maps, or when no image has a mask."""
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} maps but {len(masks)} masks")
    if all(mask is None for mask in masks):
        raise ValueError("no image has pixel ground truth (every mask is None)")
    out_maps, out_masks = [], []
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        amap = _finite(amap, f"anomaly map {i}")
        if amap.ndim != 2:
            raise ValueError(f"anomaly map {i} must be 2-D [H, W], got shape {amap.shape}")
        mask = np.zeros(amap.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
        if mask.shape != amap.shape:
            raise ValueError(f"mask {i} has shape {mask.shape} but its anomaly map has shape {amap.shape}")
        out_maps.append(amap)
        out_masks.append(mask)
    return out_maps, out_masks


def _cuts(maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pixel scores sorted in descending order, the sorting order, and the index of the last
    pixel of each distinct score: the first ``ends[k] + 1`` sorted pixels are those predicted
    abnormal by a threshold just below the ``k``-th largest distinct score."""
    scores = np.concatenate([m.ravel() for m in maps])
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    return ranked, order, np.flatnonzero(np.append(np.diff(ranked) != 0, True))


def pro_score(maps: Maps, masks: Masks, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (Bergmann et al., MVTec AD).

    Regions are the connected components of every lesion mask. At a threshold ``t`` the overlap of
    region ``r`` is the fraction of its pixels scoring above ``t``, ``PRO(t)`` is the mean over all
    regions (each lesion counts the same, whatever its size), and ``FPR(t)`` is the fraction of
    non-lesion pixels of all images scoring above ``t`` (images without lesion contribute only
    there). The result is ``∫₀^max_fpr PRO d FPR / max_fpr``: 1 for a perfect map, about
    ``max_fpr / 2`` for a random one.

    The curve is exact, not sampled at a fixed number of thresholds (anomalib uses a grid between
    the minimum and maximum score): ``PRO(t)`` is the sum of the weights ``1 / (R·|r|)`` of the
    lesion pixels above ``t`` (``R`` regions), so one sort of all pixels gives the operating point
    of every distinct score; tied scores are joined linearly and the end point is interpolated at
    ``max_fpr``, then integrated by trapezoids.

    >>> rng = np.random.default_rng(0)
    >>> masks = [np.pad(np.ones((20, 20)), 40)] * 4
    >>> round(pro_score([rng.random((100, 100)) for _ in masks], masks), 2)
    0.15
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    maps, masks = _checked(maps, masks)
    weights, n_regions = [], 0
    for mask in masks:
        labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        inverse_size = np.zeros(n + 1)
        inverse_size[1:] = 1.0 / np.bincount(labels.ravel(), minlength=n + 1)[1:]
        weights.append(inverse_size[labels].ravel())
        n_regions += n
    if n_regions == 0:
        raise ValueError("PRO needs at least one lesion region, but every mask is empty")
    normal = ~np.concatenate([m.ravel() for m in masks])
    if not normal.any():
        raise ValueError("PRO needs non-lesion pixels to compute the false positive rate")
    _, order, ends = _cuts(maps)
    fpr = np.append(0.0, np.cumsum(normal[order])[ends] / normal.sum())
    pro = np.append(0.0, np.cumsum(np.concatenate(weights)[order])[ends] / n_regions)
    i = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[:i] <= max_fpr < fpr[i]
    if i < fpr.size:
        end = pro[i - 1] + (pro[i] - pro[i - 1]) * (max_fpr - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
        fpr, pro = np.append(fpr[:i], max_fpr), np.append(pro[:i], end)
    return float(trapezoid(pro, fpr) / max_fpr)


def pixel_quantile_threshold(val_normal_maps: Maps, q: float) -> tuple[float, str]:
    """The label-free pixel threshold: the ``q``-quantile of every pixel score of validation normals.

    >>> pixel_quantile_threshold([np.array([[0.0, 1.0]]), np.array([[2.0, 3.0], [4.0, 5.0]])], 0.5)
    (2.5, 'val_normal_pixel_q0.5')
    """
    if len(val_normal_maps) == 0:
        raise ValueError("no validation-normal maps to set a pixel threshold from")
    pixels = np.concatenate([_finite(m, f"validation map {i}").ravel() for i, m in enumerate(val_normal_maps)])
    value, _ = quantile_threshold(pixels, q)
    return value, f"val_normal_pixel_q{q:g}"


def remove_small_regions(prediction: np.ndarray, min_region: int) -> np.ndarray:
    """``prediction`` (boolean ``[H, W]``) without its connected components of fewer than ``min_region`` pixels.

    >>> remove_small_regions(np.array([[1, 1, 0, 0], [1, 1, 0, 1]], dtype=bool), 2).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    labels, _ = ndimage.label(prediction, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_region
    keep[0] = False  # background
    return keep[labels]


def segmentation_scores(maps: Maps, masks: Masks, threshold: float, min_region: int = 0) -> dict[str, float]:
    """Dice and IoU of ``map > threshold`` against the masks, **pooled** over all pixels of all images.

    ``dice = 2·TP / (2·TP + FP + FN)`` and ``iou = TP / (TP + FP + FN)``, with TP/FP/FN summed
    over the pixels of every image passed, abnormal and normal (false positives on normal images
    count) — the convention of MedIAnomaly (Cai et al. 2024), which pools the test pixels.
    PMSACL (following CCD) reports IoU / Dice on abnormal test images only without saying how
    they are aggregated; to reproduce that setting pass only the abnormal images. With
    ``min_region > 0``, predicted connected components smaller than ``min_region`` pixels are
    removed first (per image).

    >>> maps = [np.array([[0.9, 0.8, 0.1]]), np.array([[0.0, 0.7, 0.0]])]
    >>> segmentation_scores(maps, [np.array([[1, 0, 0]]), None], threshold=0.5)
    {'dice': 0.5, 'iou': 0.3333333333333333}
    """
    if min_region < 0:
        raise ValueError(f"min_region must be >= 0, got {min_region}")
    maps, masks = _checked(maps, masks)
    tp = fp = fn = 0
    for amap, mask in zip(maps, masks):
        pred = amap > threshold
        if min_region > 1:
            pred = remove_small_regions(pred, min_region)
        tp += int((pred & mask).sum())
        fp += int((pred & ~mask).sum())
        fn += int((~pred & mask).sum())
    if tp + fn == 0:
        raise ValueError("Dice / IoU need lesion pixels, but every mask is empty")
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}


def oracle_dice(maps: Maps, masks: Masks) -> tuple[float, float]:
    """The best pooled Dice over all thresholds, chosen **on the test labels**, and that threshold.

    MedIAnomaly's protocol ("best Dice"): optimistic, because the threshold is fitted on the
    very masks it is evaluated on — report it only under the key ``oracle_dice``, never as the
    Dice of a deployable model. Pixels are pooled as in :func:`segmentation_scores`. The search is
    exact (every cut between distinct scores, by sorting), where MedIAnomaly tries 200
    quantiles; the threshold returned is the midpoint between the last score predicted abnormal
    and the next lower one.

    >>> oracle_dice([np.array([[0.9, 0.5, 0.25, 0.0]])], [np.array([[1, 1, 0, 0]])])
    (1.0, 0.375)
    """
    maps, masks = _checked(maps, masks)
    truth = np.concatenate([m.ravel() for m in masks])
    n_lesion = int(truth.sum())
    if n_lesion == 0:
        raise ValueError("Dice needs lesion pixels, but every mask is empty")
    ranked, order, ends = _cuts(maps)
    dice = 2 * np.cumsum(truth[order])[ends] / (ends + 1 + n_lesion)  # 2 TP / (predicted + lesion)
    best = int(np.argmax(dice))
    cut = ranked[ends[best]]
    threshold = (cut + ranked[ends[best] + 1]) / 2 if best + 1 < ends.size else np.nextafter(cut, -np.inf)
    return float(dice[best]), float(threshold)
