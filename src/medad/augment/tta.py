"""Deterministic test-time augmentation (the views ``t_1 .. t_A`` of CON2 eq. 16).

View 0 is the identity. View ``k >= 1`` is one mild transform — a zoom-in crop of 85–100 % of the
side at a random position, a rotation of at most 10°, a horizontal flip with probability 1/2 and a
brightness/contrast change of at most 10 % — whose parameters are drawn once from
``torch.Generator().manual_seed(seed + k)`` and applied identically to every image. An image's
view therefore depends only on the image, ``k`` and ``seed``: never on the other images in the
batch or their order, so scoring a subset reproduces scoring the full set.

>>> import torch
>>> x = torch.rand(4, 1, 16, 16)
>>> views = list(tta_views(x, n_views=3, seed=0))
>>> len(views), torch.equal(views[0], x), views[1].shape
(3, True, torch.Size([4, 1, 16, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_SCALE = 0.85
MAX_DEGREES = 10.0
MAX_INTENSITY = 0.1


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))


def tta_view(images: Tensor, k: int, seed: int) -> Tensor:
    """View ``k`` of ``images [N, C, H, W]`` (values in ``[0, 1]``); ``k = 0`` returns ``images``.

    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.equal(tta_view(x, 2, seed=5), tta_view(x, 2, seed=5)), torch.equal(tta_view(x, 0, 5), x)
    (True, True)
    """
    if k < 0:
        raise ValueError(f"view index must be >= 0, got {k}")
    if k == 0:
        return images
    gen = torch.Generator().manual_seed(seed + k)
    scale = _uniform(gen, MIN_SCALE, 1.0)
    shift_x = _uniform(gen, scale - 1.0, 1.0 - scale)
    shift_y = _uniform(gen, scale - 1.0, 1.0 - scale)
    angle = math.radians(_uniform(gen, -MAX_DEGREES, MAX_DEGREES))
    flip = -1.0 if _uniform(gen, 0.0, 1.0) < 0.5 else 1.0
    brightness = _uniform(gen, 1.0 - MAX_INTENSITY, 1.0 + MAX_INTENSITY)
    contrast = _uniform(gen, 1.0 - MAX_INTENSITY, 1.0 + MAX_INTENSITY)

    # affine_grid maps output coordinates to input coordinates: in = scale * R(angle) * flip * out + shift
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    theta = torch.tensor(
        [[cos * flip, -sin, shift_x], [sin * flip, cos, shift_y]], dtype=images.dtype, device=images.device
    )
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean * brightness).clamp(0.0, 1.0)


def tta_views(images: Tensor, n_views: int, seed: int) -> Iterator[Tensor]:
    """The views ``0 .. n_views - 1`` of ``images`` (view 0 unchanged), one tensor at a time."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1 (view 0 is the identity), got {n_views}")
    return (tta_view(images, k, seed) for k in range(n_views))
