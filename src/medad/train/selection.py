"""Label-free checkpoint selection: which epoch to keep, from a score with a standard error.

The training loop scores the encoder at every checkpoint with a :class:`CheckpointScore` — in a
run, Rafiee's sensitivity score (:class:`medad.detectors.sensitivity.SensitivityScore`). That score
is an AUROC over few images (B = 64 held-out normals against some dozens of validation normals), so
its standard error is about 0.05 near 0.5 — as large as the differences between the checkpoints of
one run in ``benchmarks/selfsupervised.py``. :func:`choose_checkpoint` therefore keeps the last
epoch unless another checkpoint scores higher by more than ``margin`` standard errors of the
difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn


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
