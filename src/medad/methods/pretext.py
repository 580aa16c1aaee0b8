"""Pretext tasks shared by CCD and PMSACL: relative patch-position prediction (ℓ_pos).

CCD (Tian et al., MICCAI 2021) eq. (4), reused by PMSACL: take a fixed-size patch x_ω1 of an image
and a patch x_ω2 from one of its eight neighbours (with a small random jitter, so the task cannot
be solved from patch borders), encode both with the encoder f_θ, and let a head f_γ on the
concatenated features predict which of the eight neighbours x_ω2 is (8-way cross-entropy).

>>> import torch
>>> p1, p2, label = sample_patch_pairs(torch.rand(4, 1, 32, 32), patch_size=8, jitter=2)
>>> p1.shape, p2.shape, label.shape
(torch.Size([4, 1, 8, 8]), torch.Size([4, 1, 8, 8]), torch.Size([4]))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (row, column) offsets of the eight neighbours, in units of one patch plus the gap; the index is the class.
NEIGHBOURS = torch.tensor([[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]])


def sample_patch_pairs(
    images: Tensor, patch_size: int, jitter: int = 0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A centre patch, one of its 8 neighbours and the neighbour's class in ``0..7``, per image.

    The 3x3 arrangement of patches (each ``patch_size`` plus ``jitter`` of gap) is placed at a
    random position; each neighbour is moved by up to ``jitter`` pixels in each direction.
    """
    n, _, h, w = images.shape
    step = patch_size + jitter
    span = 3 * patch_size + 4 * jitter  # three patches, two gaps, and the jitter on both sides
    if span > min(h, w):
        raise ValueError(
            f"patch_size={patch_size} with jitter={jitter} needs images of at least {span} px, got {h}x{w}"
        )

    def rand(high: int, size: tuple[int, ...]) -> Tensor:
        return torch.randint(0, high + 1, size, generator=generator)

    label = rand(7, (n,))
    grid_corner = jitter + torch.stack([rand(h - span, (n,)), rand(w - span, (n,))], 1)
    centre = grid_corner + step
    other = centre + NEIGHBOURS[label] * step + rand(2 * jitter, (n, 2)) - jitter
    return crop(images, centre, patch_size), crop(images, other, patch_size), label.to(images.device)


def random_crops(images: Tensor, size: int) -> Tensor:
    """One ``size x size`` crop per image at a uniformly random position (global torch RNG); the
    local models of CCD and PMSACL train on these.

    >>> random_crops(torch.rand(3, 1, 40, 40), 32).shape
    torch.Size([3, 1, 32, 32])
    """
    n, _, h, w = images.shape
    if min(h, w) < size:
        raise ValueError(f"crops of {size} px need images of at least {size} px, got {h}x{w}")
    corners = torch.stack([torch.randint(0, h - size + 1, (n,)), torch.randint(0, w - size + 1, (n,))], dim=1)
    return crop(images, corners, size)


def crop(images: Tensor, corners: Tensor, size: int) -> Tensor:
    """``size x size`` crops of ``images [N, C, H, W]`` at per-image top-left ``corners [N, 2]``."""
    rows = corners[:, :1].to(images.device) + torch.arange(size, device=images.device)  # [N, size]
    cols = corners[:, 1:].to(images.device) + torch.arange(size, device=images.device)
    idx = torch.arange(len(images), device=images.device)[:, None, None]
    out = images.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # [N, size, size, C]
    return out.permute(0, 3, 1, 2).contiguous()


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` still normalise with batch statistics but keep their running ones.

    Used for the ℓ_pos patches: they are much smaller than the images, and letting them into the
    running statistics leaves the eval-mode encoder (what the detectors use) normalising images
    with patch statistics.

    >>> bn = nn.BatchNorm1d(2)
    >>> with frozen_running_stats(bn):
    ...     _ = bn(torch.randn(8, 2) + 5)
    >>> bn.running_mean.tolist(), bn.momentum
    ([0.0, 0.0], 0.1)
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - momentum) * running + momentum * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


class PatchPositionHead(nn.Module):
    """f_γ of CCD eq. (4): an MLP on the concatenated features of the two patches → 8 logits."""

    def __init__(self, in_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 8))

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        return self.net(torch.cat([f1, f2], dim=1))


def patch_position_loss(
    encoder: nn.Module, head: PatchPositionHead, images: Tensor, patch_size: int, jitter: int
) -> tuple[Tensor, Tensor]:
    """ℓ_pos of CCD eq. (4) on one batch, and the accuracy of the 8-way prediction (detached).

    The patches do not update the encoder's BatchNorm running statistics (see
    :func:`frozen_running_stats`)."""
    p1, p2, label = sample_patch_pairs(images, patch_size, jitter)
    with frozen_running_stats(encoder):
        features = encoder(torch.cat([p1, p2]))
    logits = head(features[: len(p1)], features[len(p1) :])
    with torch.no_grad():
        accuracy = (logits.argmax(1) == label).float().mean()
    return F.cross_entropy(logits, label), accuracy
