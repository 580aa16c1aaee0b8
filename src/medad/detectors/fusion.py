"""Score fusion: the mean of several scores, each standardised on validation normals.

Scores of different detectors live on different scales (a Mahalanobis distance in the hundreds,
a mean residual near 0.01), so each score s_m is first standardised by the mean μ_m and standard
deviation σ_m of its scores on the validation normals, and the fused score is their mean:

    s(x) = (1 / M) Σ_m (s_m(x) − μ_m) / σ_m

This is PyOD's "average" combination of standardised scores (Aggarwal & Sathe 2015, *Theoretical
foundations and algorithms for outlier ensembles*), with the standardisation fitted on held-out
normals instead of the training images (where memorising scores such as Mahalanobis or S_NND are
biased low). It needs no label; docs/detectors/fusion.md says when it helps.

>>> import torch
>>> stats = fit_fusion({"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([10.0, 30.0])})
>>> fuse_scores({"a": torch.tensor([5.0]), "b": torch.tensor([20.0])}, stats).tolist()
[1.5]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

Standardisation = dict[str, tuple[float, float]]
"""Per score: (mean, standard deviation) of its validation-normal scores."""


def fit_fusion(val_scores: Mapping[str, Tensor]) -> Standardisation:
    """(μ_m, σ_m) of each score over the validation normals; σ_m is the population standard
    deviation. Needs at least two validation normals and a score that varies over them."""
    stats: Standardisation = {}
    for name, scores in val_scores.items():
        scores = scores.double().flatten()
        if len(scores) < 2:
            raise ValueError(f"score fusion needs at least 2 validation normals, got {len(scores)}")
        std = float(scores.std(unbiased=False))
        if not std > 0:
            raise ValueError(f"score {name!r} is constant on the validation normals: it cannot be standardised")
        stats[name] = (float(scores.mean()), std)
    return stats


def fuse_scores(scores: Mapping[str, Tensor], stats: Standardisation) -> Tensor:
    """The mean over ``stats``' scores of (s_m − μ_m) / σ_m, as float64 ``[N]`` (summed in name
    order, so that a saved and reloaded model gives the same digits)."""
    parts = [(scores[name].double() - stats[name][0]) / stats[name][1] for name in sorted(stats)]
    return torch.stack(parts).mean(0)
