"""What every detector (anomaly score) provides.

A detector is an ``nn.Module`` whose fitted statistics are buffers, so ``state_dict()`` saves it
and ``load_state_dict`` restores it without pickling. ``fit`` and ``score`` take preprocessed
images ``[N, C, H, W]`` and the (frozen, eval-mode) encoder, which embedding detectors use and
reconstruction detectors ignore (or use only to initialise their own encoder); ``fit`` also takes
an optional pool of ``unlabeled`` images, which only DDAD uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class NonFiniteFeatures(ValueError):
    """The encoder gave NaN/Inf embeddings or feature maps: its weights diverged in pre-training,
    or the images hold values it cannot handle (:meth:`medad.model.AnomalyDetector.fit` says which
    to suspect)."""


class DetectorParams(BaseModel):
    """Base class of each detector's validated parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class DetectorOutput:
    """Scores ``[N]`` (higher = more anomalous) and, for spatial detectors, maps ``[N, H, W]``."""

    scores: Tensor
    maps: Tensor | None = None


class Detector(nn.Module, ABC):
    """Base class; subclasses set ``name``, ``Params`` and implement ``fit`` / ``score``.

    ``cache`` is a dict that the caller shares between detectors scoring the same images, so that
    e.g. embeddings are computed once for Mahalanobis, S_NND and S_LH.
    """

    name: ClassVar[str]
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    spatial: ClassVar[bool] = False
    needs_encoder: ClassVar[bool] = True
    statistics: ClassVar[tuple[str, ...]] = ()
    """Names of buffers whose shapes are only known after fitting (registered empty)."""

    def __init__(self, **params: Any):
        super().__init__()
        self.params = self.Params(**params)

    @property
    def uses_encoder(self) -> bool:
        """Whether ``fit`` reads the medad encoder, its features or its weights: a method that
        trains pre-trains the encoder only when some detector of the run uses it."""
        return self.needs_encoder

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        # a freshly built detector has empty statistics: take their shapes from the loaded state
        for name in self.statistics:
            if prefix + name in state_dict:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @abstractmethod
    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> Detector:
        """Estimate the normal model from normal training images (and ``unlabeled`` ones, if it can)."""

    @abstractmethod
    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """Anomaly scores (and maps) of ``images``."""

    def diagnostics(self, val_images: Tensor) -> dict[str, float]:
        """Label-free diagnostics of the fitted detector on preprocessed validation normals, reported
        in metrics.json under ``<detector>_<key>`` (e.g. DDAD's synthetic-anomaly AUROCs); empty by
        default."""
        return {}
