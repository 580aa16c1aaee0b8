import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from medad.linalg import log_det_spd, shrunk_covariance, spd_inverse
from tolerance import tolerance


def _spd(*batch: int, d: int, seed: int = 0) -> torch.Tensor:
    A = torch.randn(*batch, d, 2 * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return A @ A.transpose(-2, -1) / (2 * d) + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("batch,d", [((), 64), ((), 512), ((8,), 256), ((2, 3), 64)])
def test_spd_inverse_is_inverse(batch, d):
    C = _spd(*batch, d=d)
    inv = spd_inverse(C)
    assert inv.shape == C.shape and inv.dtype == torch.float64
    assert (C @ inv - torch.eye(d, dtype=torch.float64)).abs().max() < 1e-6


def test_spd_inverse_accepts_float32():
    C = _spd(d=16).float()
    assert (C.double() @ spd_inverse(C) - torch.eye(16, dtype=torch.float64)).abs().max() < 1e-6


def test_jitter_only_touches_the_singular_matrix():
    good = _spd(d=3)
    singular = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    inv = spd_inverse(torch.stack([good, singular]))
    assert torch.isfinite(inv).all()
    # batched and single LAPACK calls may round differently: the float64 error of a Cholesky inverse,
    # three stages of 3-term sums each amplified by the condition number, is far below what the
    # smallest jitter (1e-10 * mean(diag)) changes (about 2e-9 here)
    single = spd_inverse(good)
    tol = tolerance(torch.float64, terms=3, scale=3 * float(torch.linalg.cond(good) * single.abs().max()))
    assert tol["atol"] < 1e-11
    torch.testing.assert_close(inv[0], single, **tol)
    # the jittered inverse behaves like a pseudo-inverse on the non-singular part
    assert torch.allclose(singular @ inv[1] @ singular, singular, atol=1e-6)
    assert torch.isfinite(log_det_spd(singular))


def test_non_finite_matrix_raises():
    with pytest.raises(ValueError, match="not positive definite"):
        spd_inverse(torch.full((3, 3), float("nan"), dtype=torch.float64))


def test_log_det_matches_slogdet():
    C = _spd(4, d=32)
    sign, logabs = torch.linalg.slogdet(C)
    assert (sign == 1).all()
    assert torch.allclose(log_det_spd(C), logabs)


@pytest.mark.parametrize("n,d", [(40, 10), (10, 40), (200, 3)])
def test_ledoit_wolf_matches_sklearn(n, d):
    rng = np.random.default_rng(n + d)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0
    mean, cov, shrinkage = shrunk_covariance(torch.from_numpy(X))
    ref = LedoitWolf().fit(X)
    np.testing.assert_allclose(mean.numpy(), ref.location_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), ref.covariance_, rtol=1e-8, atol=1e-12)
    assert float(shrinkage) == pytest.approx(ref.shrinkage_, rel=1e-8)


def test_ledoit_wolf_batched_equals_single():
    X = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(1))
    mean, cov, shrinkage = shrunk_covariance(X)
    for i in range(3):
        m, c, s = shrunk_covariance(X[i])
        assert torch.allclose(mean[i], m) and torch.allclose(cov[i], c) and torch.allclose(shrinkage[i], s)
