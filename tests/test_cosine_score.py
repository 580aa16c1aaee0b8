"""Temperature-weighted cosine score (Rafiee et al., ICANN 2022 eq. 6) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torch import nn

import medad.detectors.knn as knn
from medad.detectors.cosine import TemperatureCosineDetector
from medad.detectors.registry import DETECTORS, build_detector
from tolerance import tolerance


def as_images(z: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(z, dtype=torch.float32)[:, :, None, None]


def unit(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.fixture
def clouds() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 5)) + 3.0
    test = np.concatenate([rng.normal(size=(8, 5)) + 3.0, -rng.normal(size=(2, 5)) - 3.0])
    return train, test


@pytest.mark.parametrize("tau", [0.04, 0.2])
def test_score_is_minus_tau_log_mean_exp_cosine(clouds, tau) -> None:
    train, test = clouds
    det = TemperatureCosineDetector(temperature=tau).fit(as_images(train), nn.Flatten())
    scores = det.score(as_images(test), nn.Flatten()).scores.numpy()
    cos = unit(test.astype(np.float32).astype(np.float64)) @ unit(train.astype(np.float32).astype(np.float64)).T
    paper = -np.exp(cos / tau).mean(1)  # eq. 6 as printed
    np.testing.assert_allclose(scores, -tau * np.log(-paper), rtol=1e-5, atol=1e-6)
    # the float32 scores can only rank differently from the float64 reference where two reference scores
    # lie within twice the tolerance above of each other: none do, so equal ranks are no matter of rounding
    reference = np.sort(-tau * np.log(-paper))
    assert np.diff(reference).min() > 2 * (1e-6 + 1e-5 * np.abs(reference).max())
    assert np.array_equal(rankdata(scores), rankdata(paper))  # same ranking, hence same AUROC


def test_outliers_rank_above_inliers(clouds) -> None:
    train, test = clouds
    scores = TemperatureCosineDetector().fit(as_images(train), nn.Flatten()).score(as_images(test), nn.Flatten()).scores
    assert scores[8:].min() > scores[:8].max()


def test_small_temperature_tends_to_the_nearest_neighbour_score(clouds) -> None:
    train, test = clouds
    cos = unit(test) @ unit(train).T
    det = TemperatureCosineDetector(temperature=1e-4).fit(as_images(train), nn.Flatten())
    np.testing.assert_allclose(det.score(as_images(test), nn.Flatten()).scores.numpy(), -cos.max(1), atol=2e-3)


def test_chunked_scoring_gives_the_same_scores(clouds, monkeypatch) -> None:
    train, test = clouds
    det = TemperatureCosineDetector(tta=1).fit(as_images(train), nn.Flatten())
    whole = det.score(as_images(test), nn.Flatten()).scores
    monkeypatch.setattr(knn, "CHUNK_ELEMENTS", 7)  # 1 query per chunk
    # a [1, 5] @ [5, 60] product per chunk instead of one [10, 5] @ [5, 60]: BLAS may sum the 5 products
    # of unit vectors in another order; the score moves by at most the largest change of a similarity
    torch.testing.assert_close(det.score(as_images(test), nn.Flatten()).scores, whole, **tolerance(terms=5))


def test_registered_as_cosine() -> None:
    assert DETECTORS["cosine"] is TemperatureCosineDetector
    assert build_detector("cosine", {"temperature": 0.08}).params.temperature == 0.08
    with pytest.raises(ValueError):
        build_detector("cosine", {"temperature": 0})
