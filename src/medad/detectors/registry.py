"""Detectors by name.

>>> build_detector("nnd", {"k": 3}).params.k
3
>>> applicable_detectors("lh")
['lh', 'mahalanobis', 'nnd']
"""

from __future__ import annotations

from typing import Any

from medad.detectors.base import Detector
from medad.detectors.embedding import EmbeddingDetector
from medad.detectors.gaussian import LikelihoodDetector, MahalanobisDetector
from medad.detectors.knn import NearestNeighbourDetector

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (MahalanobisDetector, NearestNeighbourDetector, LikelihoodDetector)
}


def _detector_class(name: str) -> type[Detector]:
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known detectors: {', '.join(sorted(DETECTORS))}") from None


def build_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """A new, unfitted detector ``name`` with validated ``params``."""
    return _detector_class(name)(**(params or {}))


def applicable_detectors(primary: str) -> list[str]:
    """The scores reported beside ``primary`` when ``detector.also`` is ``auto`` (``primary`` first).

    Every embedding detector applies whenever the primary one is an embedding detector (they
    share the encoder's forward pass); otherwise only ``primary`` itself.
    """
    if not issubclass(_detector_class(primary), EmbeddingDetector):
        return [primary]
    others = [name for name, cls in DETECTORS.items() if name != primary and issubclass(cls, EmbeddingDetector)]
    return [primary, *others]
