"""``stats``: the Mahalanobis distance of an image's intensity statistics from the training normals'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

import medad.detectors.statistics as statistics
from medad.detectors.registry import build_detector
from medad.detectors.statistics import ImageStatisticsDetector, image_statistics
from tolerance import tolerance


def _normals(n: int = 40, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    level = 0.3 + 0.1 * torch.rand(n, channels, 1, 1, generator=g)
    return (level + 0.05 * torch.randn(n, channels, 16, 16, generator=g)).clamp(0, 1)


def test_statistics_are_mean_std_and_quantiles_per_channel():
    x = _normals(5, channels=2)
    f = image_statistics(x, (0.05, 0.5, 0.95)).numpy()
    a = x.flatten(2).double().numpy()
    expected = np.concatenate([np.stack([a[:, c].mean(1), a[:, c].std(1),
                                         *np.quantile(a[:, c], [0.05, 0.5, 0.95], axis=1)], axis=1)
                               for c in range(2)], axis=1)
    np.testing.assert_allclose(f, expected, rtol=1e-12, atol=1e-12)  # float64 sums of 256 terms both ways


def test_large_inputs_are_summarised_in_batches_with_the_same_result(monkeypatch):
    x = _normals(7)
    whole = image_statistics(x, (0.1, 0.9))
    monkeypatch.setattr(statistics, "_QUANTILE_ELEMENTS", 2 * 16 * 16)  # two images per batch
    # the reductions run over other batch shapes (other vector blocks): float64 rounding of 256 terms
    torch.testing.assert_close(image_statistics(x, (0.1, 0.9)), whole, **tolerance(torch.float64, terms=256))


def test_score_is_the_mahalanobis_distance_under_ledoit_wolf():
    train, test = _normals(40), _normals(6, seed=1)
    det = ImageStatisticsDetector().fit(train, None)
    feats = image_statistics(train, (0.05, 0.5, 0.95)).numpy()
    lw = LedoitWolf().fit(feats)
    diff = image_statistics(test, (0.05, 0.5, 0.95)).numpy() - lw.location_
    expected = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(lw.covariance_), diff))
    # float64 throughout; medad floors the variances at 1e-9 of the largest (for constant statistics)
    np.testing.assert_allclose(det.score(test, None).scores.numpy(), expected, rtol=1e-4)


def test_global_changes_score_high_and_normals_low():
    train, normal = _normals(60), _normals(20, seed=2)
    det = build_detector("stats").fit(train, None)
    base = det.score(normal, None).scores
    for changed in (normal + 0.3, normal * 0.5, 0.35 + 2.0 * (normal - normal.mean())):  # brighter, darker, contrast
        assert det.score(changed.clamp(0, 1), None).scores.min() > base.max()


def test_state_dict_round_trip_and_errors():
    train = _normals(10)
    det = ImageStatisticsDetector().fit(train, None)
    loaded = ImageStatisticsDetector()
    loaded.load_state_dict(det.state_dict())
    assert torch.equal(loaded.score(train, None).scores, det.score(train, None).scores)
    with pytest.raises(RuntimeError, match="not fitted"):
        ImageStatisticsDetector().score(train, None)
    with pytest.raises(ValueError, match="another number of channels"):
        det.score(_normals(3, channels=3), None)
    with pytest.raises(ValueError, match="at least 2"):
        ImageStatisticsDetector().fit(train[:1], None)
    constant = torch.zeros(8, 1, 4, 4)
    constant[:, :, 0, 0] = 1.0  # every image spans exactly [0, 1]: constant quantiles, a finite score still
    assert torch.isfinite(ImageStatisticsDetector().fit(constant, None).score(constant, None).scores).all()
