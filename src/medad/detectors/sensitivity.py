"""Rafiee et al.'s sensitivity score: how strongly an encoder tells its training images from unseen
normals, with no abnormal image involved.

The score (Rafiee's thesis, section 6 / ICANN 2022 section 3.4): B training normals are held out
of the *reference* set (they stay in training), a detector is fitted on the remaining training
normals, and the score is the AUROC separating the held-out training normals (negatives) from the
validation normals (positives). The thesis finds that, in the range near 0.5, models with a higher
sensitivity detect anomalies better, and uses it to pick hyper-parameters; medad also uses it to
pick a checkpoint (``train.select_by: sensitivity``, :func:`medad.train.selection.choose_checkpoint`).

>>> import torch
>>> from torch import nn
>>> score = SensitivityScore(torch.rand(40, 1, 4, 4), torch.rand(10, 1, 4, 4), holdout=10)
>>> 0.0 <= score(nn.Flatten()) <= 1.0
True
>>> round(score.standard_error(0.5), 3)
0.132
"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from medad.detectors.registry import build_detector
from medad.runtime import module_device
from medad.train.selection import auroc_standard_error


class SensitivityScore:
    """Callable ``encoder -> sensitivity`` with a fixed, seeded split of the training normals.

    ``detector`` names the embedding score used (``nnd``: the cosine nearest-neighbour score, the
    closest medad score to the thesis's cosine score). At most half of the training images are
    held out.
    """

    def __init__(
        self, train: Tensor, val: Tensor, holdout: int = 64, detector: str = "nnd", seed: int = 0
    ):
        if len(val) < 1 or len(train) < 4:
            raise ValueError(
                f"the sensitivity score needs validation normals and >= 4 training images, "
                f"got {len(val)} and {len(train)}"
            )
        b = max(1, min(holdout, len(train) // 2))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        self.held_out, self.reference, self.val = train[order[:b]], train[order[b:]], val
        self.detector = detector

    @torch.no_grad()
    def __call__(self, encoder: nn.Module) -> float:
        det = build_detector(self.detector, {}).to(module_device(encoder))
        det.fit(self.reference, encoder)
        cache: dict = {}
        held = det.score(self.held_out, encoder, cache).scores
        val = det.score(self.val, encoder, cache).scores
        labels = torch.cat([torch.zeros(len(held)), torch.ones(len(val))])
        return float(roc_auc_score(labels.numpy(), torch.cat([held, val]).numpy()))

    def standard_error(self, value: float) -> float:
        """Hanley–McNeil standard error of a score ``value`` from this split's image counts."""
        return auroc_standard_error(value, len(self.val), len(self.held_out))
