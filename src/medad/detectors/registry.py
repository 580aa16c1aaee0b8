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


def applicable_detectors(primary: str, params: dict[str, Any] | None = None) -> list[str]:
    """The scores reported beside ``primary`` (with ``params``) when ``detector.also`` is ``auto``
    (``primary`` first).

    Every embedding detector applies whenever the primary one uses the medad encoder
    (:attr:`~medad.detectors.base.Detector.uses_encoder`): another embedding detector, which shares
    their forward pass; PaDiM, beside whose maps the image-level embedding scores are still
    reported; IGD, or f-AnoGAN started from the encoder, whose pre-trained encoder the embedding
    scores read as it was before they fine-tune a copy. Detectors that train their own network
    from scratch get only ``primary`` itself.

    >>> applicable_detectors("igd")[:2], applicable_detectors("fanogan", {"encoder_init": "scratch"})
    (['igd', 'mahalanobis'], ['fanogan'])
    """
    if not build_detector(primary, params).uses_encoder:
        return [primary]
    others = [name for name, cls in DETECTORS.items() if name != primary and issubclass(cls, EmbeddingDetector)]
    return [primary, *others]
