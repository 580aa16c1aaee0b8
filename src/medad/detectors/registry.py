"""Detectors by name (the names and modules: :mod:`medad.catalog`).

>>> build_detector("nnd", {"k": 3}).params.k
3
>>> applicable_detectors("lh")
['lh', 'mahalanobis', 'nnd', 'cosine']
>>> applicable_detectors("padim")
['padim', 'mahalanobis', 'nnd', 'lh', 'cosine']
"""

from __future__ import annotations

from typing import Any

from medad import catalog
from medad.detectors.base import Detector
from medad.detectors.embedding import EmbeddingDetector

DETECTORS: dict[str, type[Detector]] = catalog.resolve(catalog.DETECTORS)


def detector_class(name: str) -> type[Detector]:
    """The detector class registered as ``name`` (ValueError listing the known names otherwise)."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known detectors: {', '.join(sorted(DETECTORS))}") from None


def build_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """A new, unfitted detector ``name`` with validated ``params``."""
    return detector_class(name)(**(params or {}))


def applicable_detectors(primary: str) -> list[str]:
    """The scores reported beside ``primary`` when ``detector.also`` is ``auto`` (``primary`` first).

    Every embedding detector applies whenever the primary one reads the frozen encoder
    (``needs_encoder``): another embedding detector, which shares their forward pass, or PaDiM,
    beside whose maps the image-level embedding scores are still reported. Detectors that train
    their own network get only ``primary`` itself.
    """
    if not detector_class(primary).needs_encoder:
        return [primary]
    others = [name for name, cls in DETECTORS.items() if name != primary and issubclass(cls, EmbeddingDetector)]
    return [primary, *others]
