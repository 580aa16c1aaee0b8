"""Label-free model selection: Rafiee et al.'s sensitivity score.

The sensitivity score (Rafiee's thesis, section 6 / ICANN 2022 section 3.4) asks how strongly the
current encoder tells images it was trained on from unseen normal images. B training normals are
held out of the *reference* set (they stay in training), a detector is fitted on the remaining
training normals, and the score is the AUROC separating the held-out training normals (negatives)
from the validation normals (positives). No abnormal image is involved. The thesis finds that, in
the range near 0.5, models with a higher sensitivity detect anomalies better, and uses it to pick
hyper-parameters; medad also uses it to pick a checkpoint (``train.select_by: sensitivity``).

The score is an AUROC over few images (B = 64 held-out normals against some dozens of validation
normals), so its standard error is about 0.05 near 0.5 — as large as the differences between the
checkpoints of one run in ``benchmarks/selfsupervised.py``. :func:`choose_checkpoint` therefore
keeps the last epoch unless another checkpoint scores higher by more than ``margin`` standard
errors of the difference.

>>> import torch
>>> from torch import nn
>>> score = SensitivityScore(torch.rand(40, 1, 4, 4), torch.rand(10, 1, 4, 4), holdout=10)
>>> 0.0 <= score(nn.Flatten()) <= 1.0
True
>>> round(score.standard_error(0.5), 3)
0.132
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from medad.detectors.registry import build_detector
from medad.runtime import module_device


def auroc_standard_error(auroc: float, n_positive: int, n_negative: int) -> float:
    """Standard error of an AUROC from ``n_positive`` and ``n_negative`` samples.

    Hanley & McNeil (1982), "The meaning and use of the area under a ROC curve", eq. 2:
    SE² = [A(1 − A) + (n_p − 1)(Q1 − A²) + (n_n − 1)(Q2 − A²)] / (n_p n_n) with
    Q1 = A / (2 − A) and Q2 = 2A² / (1 + A).

    >>> round(auroc_standard_error(0.5, 100, 100), 4)
    0.0409
    """
    if n_positive < 1 or n_negative < 1:
        raise ValueError(f"an AUROC needs both classes, got {n_positive} positives and {n_negative} negatives")
    a = min(max(auroc, 0.0), 1.0)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)
    return math.sqrt(max(var, 0.0) / (n_positive * n_negative))


class CheckpointScore(Protocol):
    """What the training loop needs to rank checkpoints: a score and its standard error."""

    def __call__(self, encoder: nn.Module) -> float: ...

    def standard_error(self, value: float) -> float: ...


def choose_checkpoint(history: Sequence[dict[str, Any]], margin: float = 1.0) -> int | None:
    """The epoch to keep: the last scored checkpoint, unless the best one beats it clearly.

    ``history`` records carry ``sensitivity`` and ``sensitivity_se`` at checkpoint epochs. The
    best-scoring checkpoint replaces the last one only if its score is higher by more than
    ``margin`` · sqrt(SE_best² + SE_last²) (treating the two scores as independent, which
    overstates the error of their difference and so errs towards the last epoch).
    ``margin = 0`` takes the best score outright. ``None`` when no checkpoint was scored.

    >>> h = [{"epoch": 1, "sensitivity": 0.60, "sensitivity_se": 0.02},
    ...      {"epoch": 2, "sensitivity": 0.52, "sensitivity_se": 0.02}]
    >>> choose_checkpoint(h), choose_checkpoint(h, margin=3.0)
    (1, 2)
    """
    scored = [h for h in history if h.get("sensitivity") is not None]
    if not scored:
        return None
    last = scored[-1]
    best = max(scored, key=lambda h: h["sensitivity"])  # earliest of equal scores
    noise = math.hypot(best.get("sensitivity_se", 0.0), last.get("sensitivity_se", 0.0))
    return best["epoch"] if best["sensitivity"] - last["sensitivity"] > margin * noise else last["epoch"]


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
