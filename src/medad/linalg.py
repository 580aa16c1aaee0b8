"""Covariance estimation and symmetric-positive-definite algebra, all via Cholesky in float64.

``torch.linalg.inv`` / ``solve`` are deliberately not used: on some CPUs the batched LAPACK path
returns silently wrong inverses for matrices of a few hundred rows. Every function accepts a single
matrix ``[D, D]`` or a batch ``[..., D, D]``.

>>> import torch
>>> mean, cov, shrinkage = shrunk_covariance(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
>>> bool(torch.allclose(cov @ spd_inverse(cov), torch.eye(4, dtype=torch.float64)))
True
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_JITTERS = tuple(10.0**e for e in range(-10, 0))


def _cholesky(C: Tensor) -> Tensor:
    """Lower Cholesky factor of ``C`` (float64); matrices that are not numerically positive
    definite get ``eps * mean(diag) * I`` added, with ``eps`` growing from 1e-10 to 1e-1."""
    C = C.to(torch.float64)
    L, info = torch.linalg.cholesky_ex(C)
    if not bool((info > 0).any()):
        return L
    scale = C.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    for eps in _JITTERS:
        failed = info > 0
        jittered = C + (eps * scale)[..., None, None] * eye
        L_new, info_new = torch.linalg.cholesky_ex(jittered)
        L = torch.where(failed[..., None, None], L_new, L)
        info = torch.where(failed, info_new, info)
        if not bool((info > 0).any()):
            logger.warning("matrix not positive definite; added %.0e * mean(diag) to its diagonal", eps)
            return L
    raise ValueError("matrix is not positive definite even after adding 0.1 * mean(diag) to its diagonal")


def spd_inverse(C: Tensor) -> Tensor:
    """Inverse of a symmetric positive (semi-)definite matrix or batch, in float64.

    >>> spd_inverse(torch.diag(torch.tensor([4.0, 0.25]))).diagonal().tolist()
    [0.25, 4.0]
    """
    return torch.cholesky_inverse(_cholesky(C))


def log_det_spd(C: Tensor) -> Tensor:
    """``log det C`` of a symmetric positive definite matrix or batch (``2 sum log diag L``).

    >>> round(float(log_det_spd(torch.diag(torch.tensor([2.0, 4.0]))).exp()), 6)
    8.0
    """
    return 2.0 * _cholesky(C).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def shrunk_covariance(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, Ledoit–Wolf shrunk covariance and shrinkage of samples ``X [..., N, D]`` (float64).

    The covariance is ``(1 - a) S + a (tr S / D) I`` with ``S`` the maximum-likelihood covariance
    (divisor ``N``) and ``a`` the Ledoit–Wolf (2004) estimate of the optimal shrinkage; the same
    estimator as ``sklearn.covariance.LedoitWolf``. It is positive definite whenever ``a > 0``,
    including when ``N <= D``.

    >>> X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    >>> mean, cov, a = shrunk_covariance(X)
    >>> mean.tolist(), cov.tolist(), float(a)
    ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], 0.0)
    """
    X = X.to(torch.float64)
    n, d = X.shape[-2], X.shape[-1]
    mean = X.mean(-2)
    Xc = X - mean.unsqueeze(-2)
    emp_cov = Xc.transpose(-2, -1) @ Xc / n
    mu = emp_cov.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    if d == 1:  # one feature: shrinkage towards mu * I changes nothing
        return mean, emp_cov, torch.zeros_like(mu)
    # Ledoit–Wolf: beta estimates the variance of S, delta = ||S - mu I||_F^2 / D.
    sum_sq = (emp_cov**2).sum((-2, -1))
    fourth = ((Xc**2).sum(-1) ** 2).sum(-1)
    beta = (fourth / n - sum_sq) / (d * n)
    delta = (sum_sq - d * mu**2) / d
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(beta > 0, beta / delta, 0.0)  # beta > 0 implies delta >= beta > 0
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    cov = (1 - shrinkage)[..., None, None] * emp_cov + (shrinkage * mu)[..., None, None] * eye
    return mean, cov, shrinkage
