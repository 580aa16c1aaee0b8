"""medad: unsupervised anomaly detection in medical screening images.

>>> from medad import AnomalyDetector  # doctest: +SKIP
>>> det = AnomalyDetector(method="contrastive", detector="mahalanobis", image_size=64)  # doctest: +SKIP
>>> det.fit(normal_images).decision_function(test_images)  # doctest: +SKIP
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["AnomalyDetector", "NotFittedError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import medad.config` or `medad --help` do not load torch and every model.
    if name in ("AnomalyDetector", "NotFittedError"):
        from medad import model

        return getattr(model, name)
    raise AttributeError(f"module 'medad' has no attribute {name!r}")
