"""The 2-D embedding map of the report: one PCA basis, fitted on training normals, for every image.

Fitted once in :meth:`medad.model.AnomalyDetector.fit` (on up to 512 training normals) and saved
with the model, so that test images, validation normals and a later ``medad evaluate`` land in the
same coordinates: a cloud of abnormal images away from the normals' means something.

>>> import numpy as np
>>> z = np.random.default_rng(0).normal(size=(50, 6)) * [5, 2, 1, 1, 1, 1]
>>> basis = fit_projection(z)
>>> basis.components.shape, project(z, basis).shape
((2, 6), (50, 2))
>>> bool(abs(project(z, basis)[:, 0]).mean() > abs(project(z, basis)[:, 1]).mean())  # largest variance first
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Projection:
    """Mean ``[D]`` and the two leading principal directions ``[2, D]`` (rows; zero when fewer)."""

    mean: np.ndarray
    components: np.ndarray


def fit_projection(embeddings: np.ndarray) -> Projection:
    """PCA basis of ``embeddings [N, D]`` with a fixed sign (first non-zero entry positive), so that
    two fits of the same data agree."""
    z = np.asarray(embeddings, dtype=np.float64)
    mean = z.mean(0)
    if len(z) < 3:
        return Projection(mean, np.zeros((2, z.shape[1])))
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    comps = vt[:2] * np.sign(vt[:2, :1] + 1e-12)
    return Projection(mean, np.pad(comps, ((0, 2 - len(comps)), (0, 0))))


def project(embeddings: np.ndarray, basis: Projection) -> np.ndarray:
    """Coordinates ``[N, 2]`` (float32) of ``embeddings`` in ``basis``."""
    return ((np.asarray(embeddings, dtype=np.float64) - basis.mean) @ basis.components.T).astype(np.float32)
