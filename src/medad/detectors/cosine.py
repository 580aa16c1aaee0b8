"""Temperature-weighted cosine score of Rafiee et al. (ICANN 2022 eq. 6; thesis eq. 6.1).

The paper scores a test image by S(x) = −(1/M) Σ_m exp(cos(f(x), f(x_m)) / τ) over the M training
embeddings f(x_m), τ = 0.04 (chosen with the sensitivity score; good values lie in [0.02, 0.08]).
Here the score is the monotone transform

    score(x) = −τ · log( (1/M) Σ_m exp(cos(f(x), f(x_m)) / τ) ),

computed with ``logsumexp`` (exp(1/τ) overflows float32 for τ < 0.011). It ranks images exactly as
S does (so AUROC is the same), is higher for more anomalous images, and stays on the scale of a
negative cosine: it lies in [−max_m cos, −max_m cos + τ log M] and tends to S_NND (eq. 12 of
CON2, :mod:`medad.detectors.knn`) as τ → 0, while a larger τ averages over more neighbours.

>>> import torch
>>> from torch import nn
>>> normals = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
>>> det = TemperatureCosineDetector().fit(normals, nn.Flatten())
>>> scores = det.score(torch.cat([normals[:1], -normals[:1]]), nn.Flatten()).scores
>>> bool(scores[1] > scores[0])
True
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medad.detectors.base import DetectorParams
from medad.detectors.embedding import EmbeddingDetector, EmbeddingParams
from medad.detectors.knn import reduce_cosine_similarities


class TemperatureCosineParams(EmbeddingParams):
    temperature: float = Field(0.04, gt=0, description="τ of the temperature-weighted cosine score (paper: 0.04)")


class TemperatureCosineDetector(EmbeddingDetector):
    """``−τ log mean_m exp(cos(g(t(x)), g(t(x_m))) / τ)`` against the training images seen through
    the same TTA view ``t``; stores the L2-normalised training embeddings of every view, like S_NND.
    """

    name: ClassVar[str] = "cosine"
    Params: ClassVar[type[DetectorParams]] = TemperatureCosineParams
    params: TemperatureCosineParams
    statistics = ("bank",)

    def _fit(self, z: Tensor) -> dict[str, Tensor]:
        return {"bank": F.normalize(z, dim=-1)}

    def _score(self, z: Tensor) -> Tensor:
        tau, log_m = self.params.temperature, math.log(self.bank.shape[1])
        return reduce_cosine_similarities(
            z, self.bank, lambda sim: -tau * (torch.logsumexp(sim.double() / tau, dim=-1) - log_m).to(sim.dtype)
        )
