"""``stats``: how far an image's intensity statistics lie from those of the training normals.

Each image is summarised per channel by its mean, standard deviation and the ``quantiles`` of its
intensities (5 %, 50 %, 95 % by default); the score is the Mahalanobis distance of that vector
from the training normals' (mean and Ledoit–Wolf shrunk covariance, :func:`medad.linalg.shrunk_covariance`),
``s(x) = sqrt((f(x) − μ)ᵀ Σ⁻¹ (f(x) − μ))``. It learns nothing about anatomy: it catches what the
trivial baselines catch — an image darker, brighter, flatter or more contrasted than the normals,
another scanner or exposure — and nothing else: a baseline to report beside a detector
(``detector.also: [stats]``). Fusing it into ``generic``'s DAE, which standardises each image, was
measured and rejected (docs/detectors/statistics.md).

>>> import torch
>>> normals = 0.4 + 0.1 * torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
>>> det = ImageStatisticsDetector().fit(normals, None)
>>> scores = det.score(torch.cat([normals[:1], normals[:1] + 0.3]), None).scores
>>> bool(scores[1] > 10 * scores[0])  # a brighter image lies far from the normals
True
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import Detector, DetectorOutput, DetectorParams
from medad.linalg import shrunk_covariance, spd_inverse


_QUANTILE_ELEMENTS = 1 << 23  # torch.quantile refuses inputs above 2^24 elements


class StatisticsParams(DetectorParams):
    quantiles: tuple[float, ...] = Field((0.05, 0.5, 0.95), description="intensity quantiles beside mean and std")


def image_statistics(images: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """``[N, C (2 + len(quantiles))]`` float64: per channel the mean, the standard deviation and the
    ``quantiles`` of each image's intensities.

    >>> image_statistics(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]), (0.5,)).tolist()
    [[0.5, 0.5, 0.5]]
    """
    per_batch = max(1, _QUANTILE_ELEMENTS // max(images[0].numel(), 1))  # torch.quantile's input limit
    out = []
    for batch in images.split(per_batch):
        x = batch.flatten(2).to(torch.float64)  # [n, C, HW]
        parts = [x.mean(-1), x.std(-1, correction=0)]
        if quantiles:
            q = torch.tensor(quantiles, dtype=torch.float64, device=x.device)
            parts += list(torch.quantile(x, q, dim=-1))  # each [n, C]
        out.append(torch.stack(parts, dim=-1).flatten(1))
    return torch.cat(out)


class ImageStatisticsDetector(Detector):
    """Mahalanobis distance of an image's intensity statistics (see the module docstring).

    Buffers: ``mean [F]`` and ``precision [F, F]`` (float64) of the training normals' statistics.
    """

    name: ClassVar[str] = "stats"
    Params: ClassVar[type[DetectorParams]] = StatisticsParams
    needs_encoder: ClassVar[bool] = False
    statistics: ClassVar[tuple[str, ...]] = ("mean", "precision")
    params: StatisticsParams

    def __init__(self, **params):
        super().__init__(**params)
        self.register_buffer("mean", torch.empty(0, dtype=torch.float64))
        self.register_buffer("precision", torch.empty(0, dtype=torch.float64))

    def fit(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *,
            unlabeled: Tensor | None = None) -> ImageStatisticsDetector:
        """The mean and shrunk covariance of the training normals' statistics."""
        if len(images) < 2:
            raise ValueError(f"detector 'stats' needs at least 2 normal images, got {len(images)}")
        mean, cov, _ = shrunk_covariance(image_statistics(images, self.params.quantiles))
        # a constant statistic (e.g. every image spans exactly [0, 1]) would make Σ singular: floor its variance
        cov = cov + torch.eye(len(cov), dtype=cov.dtype) * max(1e-12, 1e-9 * float(cov.diagonal().max()))
        self.mean = mean.to(self.mean.device)
        self.precision = spd_inverse(cov).to(self.precision.device)
        return self

    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """The Mahalanobis distance of each image's statistics, float64 on CPU."""
        if self.mean.numel() == 0:
            raise RuntimeError("detector 'stats' is not fitted: call fit() or load_state_dict() first")
        features = image_statistics(images, self.params.quantiles).to(self.mean.device)
        if features.shape[1] != len(self.mean):
            raise ValueError(f"detector 'stats' was fitted on {len(self.mean)} statistics, these images give "
                             f"{features.shape[1]} (another number of channels?)")
        diff = features - self.mean
        distance = torch.einsum("nd,de,ne->n", diff, self.precision, diff).clamp_min(0).sqrt()
        return DetectorOutput(scores=distance.cpu())
