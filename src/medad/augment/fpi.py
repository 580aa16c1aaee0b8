"""Foreign-patch interpolation (FPI): synthetic anomalies that train DDAD's ASR-Net.

A square patch h of each normal image x is blended with the same patch of another normal image
x_f (DDAD eq. 9): x_s^p = (1 − α) x^p + α x_f^p for p in h, x_s^p = x^p elsewhere, with one
α ~ U(0, 1) per image. The patch centre (per axis) and side follow DDAD eq. 10: h_c ~ U(0.1d, 0.9d),
h_s ~ U(0.1d, 0.4d), d the image side; the patch is clipped to the image. The pixel label is the
binary patch mask (DDAD trains the ASR-Net on binary pseudo labels; the original FPI of Tan et
al. 2020 regresses α instead — ``alpha`` is returned so a caller can build that target).

>>> import torch
>>> x, f = torch.zeros(4, 1, 16, 16), torch.ones(4, 1, 16, 16)
>>> out = foreign_patch_interpolation(x, f, generator=torch.Generator().manual_seed(0))
>>> out.images.shape, out.masks.shape, out.alpha.shape
(torch.Size([4, 1, 16, 16]), torch.Size([4, 16, 16]), torch.Size([4]))
>>> bool(torch.allclose(out.images[:, 0], out.masks * out.alpha.view(4, 1, 1)))
True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class FPIResult(NamedTuple):
    images: Tensor  # [N, C, H, W] blended images
    masks: Tensor  # [N, H, W] float {0, 1}: 1 inside the patch
    alpha: Tensor  # [N] interpolation factor of each image


def patch_masks(
    n: int, size: int, generator: torch.Generator | None = None, *,
    centre: tuple[float, float] = (0.1, 0.9), side: tuple[float, float] = (0.1, 0.4),
) -> Tensor:
    """``n`` binary square-patch masks ``[n, size, size]`` (DDAD eq. 10, fractions of ``size``).

    The patch covers pixels whose centres lie within ``side / 2`` of the drawn centre (at least one
    pixel), clipped to the image.
    """
    u = torch.rand(n, 3, generator=generator)
    cy = (centre[0] + (centre[1] - centre[0]) * u[:, 0]) * size
    cx = (centre[0] + (centre[1] - centre[0]) * u[:, 1]) * size
    half = (side[0] + (side[1] - side[0]) * u[:, 2]) * size / 2
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    inside_y = (grid.view(1, -1) - cy.view(-1, 1)).abs() <= half.view(-1, 1).clamp_min(0.5)
    inside_x = (grid.view(1, -1) - cx.view(-1, 1)).abs() <= half.view(-1, 1).clamp_min(0.5)
    return (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).float()


def foreign_patch_interpolation(
    images: Tensor, foreign: Tensor | None = None, generator: torch.Generator | None = None
) -> FPIResult:
    """Blend a random patch of each image with ``foreign`` (default: the batch rolled by one, i.e.
    another normal image) at α ~ U(0, 1) per image (DDAD eqs. 9-10). Works on any device; the
    random draws are made on the CPU with ``generator``.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"FPI needs square images [N, C, S, S], got {tuple(images.shape)}")
    if foreign is None:
        if len(images) < 2:
            raise ValueError("FPI without foreign images needs at least 2 images in the batch")
        foreign = images.roll(1, dims=0)
    if foreign.shape != images.shape:
        raise ValueError(f"foreign images {tuple(foreign.shape)} must match images {tuple(images.shape)}")
    n, size = len(images), images.shape[-1]
    masks = patch_masks(n, size, generator).to(images.device)
    alpha = torch.rand(n, generator=generator).to(images.device)
    weight = (masks * alpha.view(n, 1, 1)).unsqueeze(1).to(images.dtype)  # α inside h, 0 outside
    blended = (1 - weight) * images + weight * foreign
    return FPIResult(blended, masks, alpha)
