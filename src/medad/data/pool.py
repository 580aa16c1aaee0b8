"""Unlabeled pools (DDAD-style training data with a chosen share of hidden anomalies).

The abnormal material must come from training patients/splits only (e.g. PneumoniaMNIST's training
pneumonia images, ``lgg_brain_mri_dev/unlabeled_source``), never from the test set.

>>> import torch
>>> from medad.data.imageset import ImageSet
>>> normals = ImageSet(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long), [f"n{i}" for i in range(8)])
>>> abnormals = ImageSet(torch.ones(4, 1, 8, 8), torch.ones(4, dtype=torch.long), [f"a{i}" for i in range(4)])
>>> pool, hidden = build_pool(normals, abnormals, size=10, anomaly_rate=0.2, seed=0)
>>> pool.labels.unique().tolist(), int(hidden.sum())
([-1], 2)
"""

from __future__ import annotations

import numpy as np
import torch

from medad.data.imageset import ABNORMAL, NORMAL, UNKNOWN, ImageSet


def build_pool(
    normals: ImageSet, abnormals: ImageSet, size: int, anomaly_rate: float, seed: int
) -> tuple[ImageSet, np.ndarray]:
    """Draw ``round(size * anomaly_rate)`` abnormal and the rest normal images, shuffled.

    Returns the pool (labels -1, masks and defects dropped) and its hidden true labels (int64, for
    benchmarks only).
    """
    if size < 1:
        raise ValueError(f"pool size must be >= 1, got {size}")
    if not 0.0 <= anomaly_rate <= 1.0:
        raise ValueError(f"anomaly_rate must be within [0, 1], got {anomaly_rate}")
    n_abnormal = round(size * anomaly_rate)
    n_normal = size - n_abnormal
    for name, need, have in (("normal", n_normal, len(normals)), ("abnormal", n_abnormal, len(abnormals))):
        if need > have:
            raise ValueError(
                f"a pool of {size} images at anomaly_rate={anomaly_rate} needs {need} {name} images, only {have} given"
            )
    rng = np.random.default_rng(seed)
    picked = ImageSet.concat(
        [
            normals.subset(np.sort(rng.choice(len(normals), n_normal, replace=False))),
            abnormals.subset(np.sort(rng.choice(len(abnormals), n_abnormal, replace=False))),
        ]
    )
    order = rng.permutation(size)
    hidden = np.array([NORMAL] * n_normal + [ABNORMAL] * n_abnormal, dtype=np.int64)[order]
    pool = ImageSet(
        images=picked.images[torch.from_numpy(order)],
        labels=torch.full((size,), UNKNOWN, dtype=torch.long),
        ids=[picked.ids[i] for i in order],
    )
    return pool, hidden
