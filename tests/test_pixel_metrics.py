"""Localisation metrics on hand-made maps and masks, with expected values worked out by hand."""

import numpy as np
import pytest

from medad.evaluation.pixel import (
    oracle_dice,
    pixel_quantile_threshold,
    pro_score,
    remove_small_regions,
    segmentation_scores,
)


def two_lesions() -> tuple[np.ndarray, np.ndarray]:
    """A 20x20 mask with a small (3x3 = 9 px) and a large (6x6 = 36 px) lesion, and a map whose
    normal pixels lie in [0.2, 0.8): the small lesion scores 1 (found), the large one 0 (missed)."""
    mask = np.zeros((20, 20), dtype=int)
    mask[2:5, 2:5] = 1
    mask[10:16, 10:16] = 1
    amap = np.random.default_rng(0).uniform(0.2, 0.8, size=(20, 20))
    amap[2:5, 2:5] = 1.0
    amap[10:16, 10:16] = 0.0
    return amap, mask


def test_pro_of_a_perfect_map_is_one():
    amap, mask = two_lesions()
    perfect = np.where(mask > 0, 1.0, amap * 0.5)
    assert pro_score([perfect], [mask]) == pytest.approx(1.0)
    assert pro_score([mask.astype(float)], [mask]) == pytest.approx(1.0)  # ties included


def test_pro_weights_each_region_equally():
    # for every threshold with FPR <= 0.3 (all inside [0.2, 0.8)), the 9-px lesion is fully
    # covered and the 36-px one not at all: PRO = (1 + 0) / 2 = 0.5 over the whole range, whereas
    # the pixel-level overlap would be 9 / 45 = 0.2
    amap, mask = two_lesions()
    assert pro_score([amap], [mask]) == pytest.approx(0.5)
    assert pro_score([amap], [mask], max_fpr=0.05) == pytest.approx(0.5)


def test_pro_of_a_random_map_is_half_of_max_fpr():
    # iid uniform scores: FPR(t) = 1 - t and each region's overlap is 1 - t too, so PRO(FPR) = FPR
    # and the normalised area is (max_fpr^2 / 2) / max_fpr = max_fpr / 2
    rng = np.random.default_rng(1)
    masks = []
    for _ in range(6):
        m = np.zeros((64, 64), dtype=int)
        m[5:25, 5:25], m[40:50, 30:60] = 1, 1
        masks.append(m)
    maps = [rng.random((64, 64)) for _ in masks]
    assert pro_score(maps, masks) == pytest.approx(0.15, abs=0.01)
    assert pro_score(maps, masks, max_fpr=0.1) == pytest.approx(0.05, abs=0.005)


def test_normal_images_only_add_false_positives():
    amap, mask = two_lesions()
    perfect = np.where(mask > 0, 1.0, 0.0)
    # a normal image scoring above every lesion pixel: a threshold catching any lesion pixel also
    # flags its 400 pixels, FPR 400 / (355 + 400) > 0.3, so PRO stays 0 up to max_fpr
    hot_normal = np.full((20, 20), 2.0)
    assert pro_score([perfect, hot_normal], [mask, None]) == pytest.approx(0.0)
    cold_normal = np.full((20, 20), -1.0)
    assert pro_score([perfect, cold_normal], [mask, None]) == pytest.approx(1.0)


def test_dice_and_iou_by_hand():
    # image 1: lesion 4 px, prediction covers 3 of them + 1 background px: TP 3, FP 1, FN 1
    # image 2 (normal): 2 false positives. Pooled: TP 3, FP 3, FN 1
    m1 = np.zeros((4, 4), dtype=int)
    m1[0, :4] = 1
    a1 = np.zeros((4, 4))
    a1[0, :3], a1[3, 3] = 0.9, 0.9
    a2 = np.zeros((4, 4))
    a2[1, 1:3] = 0.8
    s = segmentation_scores([a1, a2], [m1, None], threshold=0.5)
    assert s["dice"] == pytest.approx(2 * 3 / (2 * 3 + 3 + 1))
    assert s["iou"] == pytest.approx(3 / (3 + 3 + 1))
    # strictly greater than the threshold
    assert segmentation_scores([a1], [m1], threshold=0.9)["dice"] == 0.0


def test_min_region_removes_small_predicted_blobs():
    mask = np.zeros((10, 10), dtype=int)
    mask[2:6, 2:6] = 1
    amap = mask.astype(float)
    amap[8, 8] = amap[0, 9] = amap[9, 0] = 1.0  # three isolated false-positive pixels
    assert segmentation_scores([amap], [mask], 0.5)["dice"] == pytest.approx(32 / 35)
    assert segmentation_scores([amap], [mask], 0.5, min_region=2)["dice"] == pytest.approx(1.0)
    assert segmentation_scores([amap], [mask], 0.5, min_region=17)["dice"] == 0.0  # the lesion too
    diagonal = np.eye(3, dtype=bool)  # 8-connected: one component of 3 px
    assert remove_small_regions(diagonal, 3).sum() == 3 and remove_small_regions(diagonal, 4).sum() == 0


def test_oracle_dice_beats_every_fixed_threshold():
    rng = np.random.default_rng(2)
    masks = [np.zeros((16, 16), dtype=int) for _ in range(3)]
    masks[0][3:9, 4:10] = 1
    masks[1][10:14, 1:5] = 1
    maps = [rng.normal(size=(16, 16)) + 1.5 * m for m in masks]
    maps.append(rng.normal(size=(16, 16)))  # a normal image
    masks.append(None)
    best, threshold = oracle_dice(maps, masks)
    assert best == pytest.approx(segmentation_scores(maps, masks, threshold)["dice"])
    for t in np.linspace(-2, 4, 61):
        assert segmentation_scores(maps, masks, t)["dice"] <= best + 1e-12
    assert oracle_dice([masks[0] * 5.0], [masks[0]]) == (1.0, 2.5)


def test_pixel_quantile_threshold():
    maps = [np.arange(10.0).reshape(2, 5), np.arange(10.0, 20.0).reshape(5, 2)]
    value, rule = pixel_quantile_threshold(maps, 0.99)
    assert value == pytest.approx(np.quantile(np.arange(20.0), 0.99)) and rule == "val_normal_pixel_q0.99"
    with pytest.raises(ValueError, match="quantile"):
        pixel_quantile_threshold(maps, 1.0)
    with pytest.raises(ValueError, match="no validation"):
        pixel_quantile_threshold([], 0.9)


@pytest.mark.parametrize(
    "call", [pro_score, oracle_dice, lambda maps, masks: segmentation_scores(maps, masks, 0.5)]
)
def test_errors(call):
    amap, mask = two_lesions()
    bad = amap.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        call([bad], [mask])
    with pytest.raises(ValueError, match="shape"):
        call([amap], [mask[:10]])
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        call([amap, amap], [mask])
    with pytest.raises(ValueError, match="no image has pixel ground truth"):
        call([amap], [None])
    with pytest.raises(ValueError, match="every mask is empty"):
        call([amap], [np.zeros_like(mask)])
    with pytest.raises(ValueError, match="NaN"):
        pixel_quantile_threshold([bad], 0.5)
