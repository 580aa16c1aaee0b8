"""Gaussian scores on the pooled embedding: Mahalanobis distance and S_LH.

Both fit, per TTA view, the mean and the Ledoit–Wolf shrunk covariance of the training
embeddings (:func:`medad.linalg.shrunk_covariance`) and invert it by Cholesky. Shrinkage keeps the
covariance invertible when there are fewer training images than embedding dimensions, which
the plain sample covariance of the papers is not.

>>> import torch
>>> from torch import nn
>>> normals = torch.randn(40, 1, 2, 2, generator=torch.Generator().manual_seed(0))
>>> det = MahalanobisDetector().fit(normals, nn.Flatten())
>>> scores = det.score(torch.cat([normals[:1], normals[:1] + 10]), nn.Flatten()).scores
>>> bool(scores[1] > scores[0])
True
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medad.detectors.base import DetectorParams
from medad.detectors.embedding import EmbeddingDetector, EmbeddingParams
from medad.linalg import log_det_spd, shrunk_covariance, spd_inverse


class _GaussianDetector(EmbeddingDetector):
    """Shared fit: per view, mean ``[V, D]``, precision ``[V, D, D]`` and ``log det Σ`` ``[V]``."""

    statistics = ("mean", "precision", "log_det")

    @abstractmethod
    def _features(self, z: Tensor) -> Tensor:
        """The float64 vectors the Gaussian is fitted on."""

    def _fit(self, z: Tensor) -> dict[str, Tensor]:
        if z.shape[1] < 2:
            raise ValueError(f"detector {self.name!r} needs at least 2 training images, got {z.shape[1]}")
        mean, cov, _ = shrunk_covariance(self._features(z))
        return {"mean": mean, "precision": spd_inverse(cov), "log_det": log_det_spd(cov)}

    def _mahalanobis(self, z: Tensor) -> Tensor:
        """Squared Mahalanobis distance ``[V, N]`` of each view to that view's Gaussian."""
        d = self._features(z) - self.mean.unsqueeze(1)
        return ((d @ self.precision) * d).sum(-1)


class MahalanobisParams(EmbeddingParams):
    normalize: bool = Field(
        False, description="L2-normalise embeddings first (as in the thesis, ch. 5); default: raw pooled output"
    )


class MahalanobisDetector(_GaussianDetector):
    """Squared Mahalanobis distance ``(h - μ)ᵀ Σ⁻¹ (h - μ)`` to the training embeddings.

    Rafiee's thesis eq. 5.2 (ISBI paper eq. 2, ch. 7 eq. 7.1) with ``μ``, ``Σ`` the mean and
    covariance of the training embeddings ``h`` (K-means with K = 1 is just the mean); here ``Σ``
    is the Ledoit–Wolf shrunk covariance. ``h`` is the pooled encoder output, L2-normalised when
    ``normalize=True`` (the thesis normalises it). The default ``False`` keeps the raw embedding:
    the distance is then invariant to rotations, isotropic scaling and shifts of the embedding
    space, and to general invertible affine maps up to the (small, for N >> D) effect of shrinkage.
    """

    name: ClassVar[str] = "mahalanobis"
    Params: ClassVar[type[DetectorParams]] = MahalanobisParams
    params: MahalanobisParams

    def _features(self, z: Tensor) -> Tensor:
        z = z.double()
        return F.normalize(z, dim=-1) if self.params.normalize else z

    def _score(self, z: Tensor) -> Tensor:
        return self._mahalanobis(z)


class LikelihoodDetector(_GaussianDetector):
    """S_LH: negative Gaussian log-density of the L2-normalised embedding (CON2 eqs. 13–15).

    ``0.5 (D log 2π + log det Σ + (z - μ)ᵀ Σ⁻¹ (z - μ))`` with ``z = g(t(x)) / ||g(t(x))||`` and
    ``μ``, ``Σ`` fitted per view on the normalised training embeddings. On the unit sphere the
    sample covariance is near-singular for tight clusters (almost no spread along the mean
    direction) and exactly singular when there are at most ``D`` training images, so the plain
    estimate of eq. 14 cannot be inverted; the Ledoit–Wolf shrunk covariance is used instead, and
    the score is the exact negative log-density of that Gaussian.
    """

    name: ClassVar[str] = "lh"

    def _features(self, z: Tensor) -> Tensor:
        return F.normalize(z.double(), dim=-1)

    def _score(self, z: Tensor) -> Tensor:
        dim = self.mean.shape[-1]
        return 0.5 * (dim * math.log(2 * math.pi) + self.log_det.unsqueeze(1) + self._mahalanobis(z))
