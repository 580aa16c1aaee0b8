import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medad.evaluation.metrics import image_metrics, pixel_auroc, quantile_threshold, youden_threshold

SCORES = np.array([0.1, 0.3, 0.2, 0.9, 0.5, 0.4, 0.8, 0.35])
LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1])


def test_image_metrics():
    m = image_metrics(SCORES, LABELS, threshold=0.38)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert m["image_ap"] == pytest.approx(average_precision_score(LABELS, SCORES))
    # predicted abnormal (> 0.38): 0.9, 0.5, 0.4, 0.8 -> TP 3 (0.9, 0.4, 0.8), FP 1 (0.5), FN 1 (0.35), TN 3
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert (m["n_test_normal"], m["n_test_abnormal"]) == (4, 4)


def test_prediction_is_strictly_greater_than_threshold():
    m = image_metrics([0.5, 0.5], [0, 1], threshold=0.5)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0


def test_nan_scores_are_named():
    with pytest.raises(ValueError, match="2 NaN and 0 infinite value"):
        image_metrics([0.1, np.nan, np.nan, 0.4], [0, 0, 1, 1], threshold=0.2)


def test_label_errors():
    with pytest.raises(ValueError, match="both normal and abnormal"):
        image_metrics([0.1, 0.2], [1, 1], threshold=0.2)
    with pytest.raises(ValueError, match="must be 0"):
        image_metrics([0.1, 0.2, 0.3], [0, 1, -1], threshold=0.2)
    with pytest.raises(ValueError, match="expected 3 labels"):
        image_metrics([0.1, 0.2, 0.3], [0, 1], threshold=0.2)


def test_quantile_threshold():
    scores = np.arange(101, dtype=float)
    assert quantile_threshold(scores, 0.95) == (95.0, "val_normal_q0.95")
    assert quantile_threshold([1.0, 3.0], 0.5) == (2.0, "val_normal_q0.5")
    with pytest.raises(ValueError, match="no validation"):
        quantile_threshold([], 0.9)
    with pytest.raises(ValueError, match="1 NaN"):
        quantile_threshold([1.0, np.nan], 0.9)


def test_youden_threshold():
    # sorted: 0.1n 0.2n 0.3n 0.35a 0.4a 0.5n 0.8a 0.9a; best cut between 0.3 and 0.35: J = 1 - 1/4
    assert youden_threshold(SCORES, LABELS) == pytest.approx(0.325)
    # ties in J: the lowest (most sensitive) threshold
    assert youden_threshold([0.0, 1.0, 2.0, 3.0], [0, 1, 0, 1]) == pytest.approx(0.5)  # J(0.5) = J(2.5)
    assert youden_threshold([0.2, 0.2], [0, 1]) == 0.2


def test_pixel_auroc():
    maps = np.array([[[0.1, 0.9], [0.2, 0.8]], [[0.3, 0.1], [0.2, 0.4]], [[0.9, 0.9], [0.9, 0.9]]])
    masks = [np.array([[0, 1], [0, 1]], dtype=np.uint8), None, None]
    # the normal image without mask counts as all-zero; the abnormal one without mask is left out
    expected = roc_auc_score([0, 1, 0, 1, 0, 0, 0, 0], np.concatenate([maps[0].ravel(), maps[1].ravel()]))
    assert pixel_auroc(maps, masks, labels=[1, 0, 1]) == pytest.approx(expected)
    # without labels every image without a mask counts as normal
    everything = roc_auc_score(np.r_[[0, 1, 0, 1], np.zeros(8)], maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(everything)


def test_pixel_auroc_errors():
    maps = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match="both lesion and non-lesion"):
        pixel_auroc(maps, [None, None])
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(maps, [np.zeros((3, 3)), None])
    with pytest.raises(ValueError, match="anomaly map 1: 1 NaN"):
        pixel_auroc(np.array([[[0.0, 1.0]], [[np.nan, 0.0]]]), [np.array([[0, 1]]), None])
