"""Tiling images into patches for the local models of the reconstruction detectors (CCD's local
MS-SSIM autoencoder, IGD) and assembling per-patch maps back into image maps.

>>> import torch
>>> x = torch.rand(2, 1, 32, 32)
>>> torch.allclose(assemble_patches(extract_patches(x, 16, 8), 32, 8), x)
True
"""

from __future__ import annotations

import torch
from torch import Tensor


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top/left offsets of patches of side ``patch`` every ``stride`` px along a side of ``size``
    px; a last patch flush with the border is added when the stride does not reach it, so the
    patches always cover the image.

    >>> patch_positions(32, 16, 8), patch_positions(32, 16, 12), patch_positions(16, 16, 8)
    ([0, 8, 16], [0, 12, 16], [0])
    """
    if not 0 < patch <= size or stride < 1:
        raise ValueError(f"need 0 < patch <= size and stride >= 1, got size {size}, patch {patch}, stride {stride}")
    positions = list(range(0, size - patch + 1, stride))
    if positions[-1] != size - patch:
        positions.append(size - patch)
    return positions


def extract_patches(x: Tensor, patch: int, stride: int) -> Tensor:
    """``[B, C, S, S]`` → ``[B·P, C, patch, patch]``, image-major (P patches of image 0 first),
    row-major over the grid of :func:`patch_positions`."""
    pos = patch_positions(x.shape[-1], patch, stride)
    patches = [x[:, :, i : i + patch, j : j + patch] for i in pos for j in pos]
    return torch.stack(patches, 1).flatten(0, 1)


def assemble_patches(patches: Tensor, size: int, stride: int) -> Tensor:
    """Inverse of :func:`extract_patches` for per-patch maps ``[B·P, (C,) p, p]``: each pixel gets
    the mean of the values of the patches that cover it. Returns ``[B, (C,) S, S]``."""
    squeeze = patches.ndim == 3
    if squeeze:
        patches = patches.unsqueeze(1)
    patch = patches.shape[-1]
    pos = patch_positions(size, patch, stride)
    grid = patches.view(-1, len(pos) * len(pos), *patches.shape[1:])
    total = patches.new_zeros(grid.shape[0], patches.shape[1], size, size)
    count = patches.new_zeros(1, 1, size, size)
    for k, (i, j) in enumerate((i, j) for i in pos for j in pos):
        total[:, :, i : i + patch, j : j + patch] += grid[:, k]
        count[:, :, i : i + patch, j : j + patch] += 1
    out = total / count
    return out[:, 0] if squeeze else out


def random_patches(x: Tensor, patch: int, per_image: int, generator: torch.Generator) -> Tensor:
    """``per_image`` random crops ``[B·per_image, C, patch, patch]`` of every image of ``x``, at
    any position (drawn on the CPU from ``generator``, so training is seeded on any device)."""
    top_left = torch.randint(0, x.shape[-1] - patch + 1, (len(x), per_image, 2), generator=generator).tolist()
    return torch.stack(
        [x[b, :, i : i + patch, j : j + patch] for b, crops in enumerate(top_left) for i, j in crops]
    )
