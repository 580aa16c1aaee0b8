"""Batch-wise *strong* augmentations: the set A_n of CCD (Tian et al., MICCAI 2021, sec. 2.1).

A strong augmentation moves an image out of the normal distribution (a rotated fundus, a colon
image whose quarters are swapped, ...). CCD treats every such transform as its own class: the
shifted copies are contrasted against each other (eq. 2) and the transform is predicted (eq. 3).

Each named *family* in :data:`STRONG_AUGMENTATIONS` is a tuple of transforms, one class each;
:func:`apply_strong` stacks the identity (class 0, the original distribution, as CSI does with the
0° rotation) and every transform of the chosen families. Transforms take a batch ``[N, C, H, W]``
in ``[0, 1]`` and draw any randomness from torch's global RNG.

>>> import torch
>>> shifted, class_ids = apply_strong(torch.rand(2, 1, 8, 8), ["rotation"])
>>> shifted.shape, class_ids.tolist()
(torch.Size([8, 1, 8, 8]), [0, 0, 1, 1, 2, 2, 3, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Transform = Callable[[Tensor], Tensor]


def identity(x: Tensor) -> Tensor:
    """Class 0 of every strong set: the image as it is."""
    return x


@dataclass(frozen=True)
class Rotation:
    """Rotate every image by ``quarter_turns`` x 90° (counter-clockwise, ``torch.rot90``).

    Odd turns swap height and width, so they need square images.

    >>> Rotation(1)(torch.tensor([[[[1, 2], [3, 4]]]])).tolist()
    [[[[2, 4], [1, 3]]]]
    """

    quarter_turns: int

    def __call__(self, x: Tensor) -> Tensor:
        if self.quarter_turns % 2 and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation by 90° or 270° needs square images, got {tuple(x.shape[-2:])}")
        return torch.rot90(x, self.quarter_turns, dims=(-2, -1))


@dataclass(frozen=True)
class QuarterPermutation:
    """Move the image's four quarters: swap the top and bottom halves and/or the left and right.

    The three non-identity settings are CSI's "CutPerm" shifts, the permutations used by CCD for
    colonoscopy. Each is a cyclic shift by half the side (``torch.roll``), so odd sides work too
    (the halves are then one pixel apart in size).

    >>> x = torch.tensor([[[[1, 2], [3, 4]]]])  # quarters TL=1, TR=2, BL=3, BR=4
    >>> QuarterPermutation(swap_rows=True, swap_cols=True)(x).tolist()
    [[[[4, 3], [2, 1]]]]
    """

    swap_rows: bool
    swap_cols: bool

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.swap_rows:
            x = torch.roll(x, -(h // 2), dims=-2)
        if self.swap_cols:
            x = torch.roll(x, -(w // 2), dims=-1)
        return x


@dataclass(frozen=True)
class Cutout:
    """Set one random axis-aligned rectangle per image to ``value`` (all channels).

    Each side is uniform in ``[min_side, max_side]`` times the image side (at least 1 px); the
    position is uniform over the places where the rectangle fits inside the image.

    >>> out = Cutout(min_side=0.5, max_side=0.5)(torch.ones(3, 1, 8, 8))
    >>> (out == 0).sum(dim=(1, 2, 3)).tolist()
    [16, 16, 16]
    """

    min_side: float = 0.25
    max_side: float = 0.5
    value: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.min_side <= self.max_side <= 1:
            raise ValueError(f"need 0 < min_side <= max_side <= 1, got {self.min_side}, {self.max_side}")

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        u = torch.rand(n, 4).to(x.device)
        rows = self._inside(u[:, 0], u[:, 1], h, x.device)  # [N, H]
        cols = self._inside(u[:, 2], u[:, 3], w, x.device)  # [N, W]
        mask = rows[:, None, :, None] & cols[:, None, None, :]
        return x.masked_fill(mask, self.value)

    def _inside(self, u_length: Tensor, u_start: Tensor, side: int, device: torch.device) -> Tensor:
        """``[N, side]`` booleans: which positions along one axis the rectangle covers."""
        low = max(1, round(self.min_side * side))
        high = max(low, round(self.max_side * side))
        length = low + (u_length * (high - low + 1)).long().clamp(max=high - low)
        start = (u_start * (side - length + 1)).long().clamp(max=side - length)
        pos = torch.arange(side, device=device)
        return (pos >= start[:, None]) & (pos < (start + length)[:, None])


@dataclass(frozen=True)
class GaussianNoise:
    """Add i.i.d. N(0, std²) noise to every pixel, then clip to ``[0, 1]``.

    The default variance 0.05 (std ≈ 0.22) is the one in the CCD authors' code; the paper gives
    no value.

    >>> x = torch.full((1, 1, 64, 64), 0.5)
    >>> 0.08 < GaussianNoise(std=0.1)(x).std().item() < 0.12
    True
    """

    std: float = math.sqrt(0.05)

    def __call__(self, x: Tensor) -> Tensor:
        return (x + self.std * torch.randn(x.shape).to(x.device, x.dtype)).clamp(0.0, 1.0)


STRONG_AUGMENTATIONS: dict[str, tuple[Transform, ...]] = {
    "rotation": (Rotation(1), Rotation(2), Rotation(3)),
    "permutation": (
        QuarterPermutation(swap_rows=True, swap_cols=False),
        QuarterPermutation(swap_rows=False, swap_cols=True),
        QuarterPermutation(swap_rows=True, swap_cols=True),
    ),
    "cutout": (Cutout(),),
    "noise": (GaussianNoise(),),
}


def strong_transforms(names: Sequence[str]) -> tuple[Transform, ...]:
    """The identity, then every transform of each named family in order; the index is the class id.

    >>> len(strong_transforms(["rotation", "cutout"]))  # identity + 3 rotations + 1 cutout
    5
    """
    unknown = [name for name in names if name not in STRONG_AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(f"unknown strong augmentations {unknown}; choose from {sorted(STRONG_AUGMENTATIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"strong augmentations must not repeat, got {list(names)}")
    return (identity, *(t for name in names for t in STRONG_AUGMENTATIONS[name]))


def apply_strong(images: Tensor, names: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Every class's version of ``images [N, C, H, W]``: ``([K*N, C, H, W], class_ids [K*N])``.

    Class-major layout: rows ``k*N .. k*N + N - 1`` hold transform ``k`` of images ``0 .. N-1``.

    >>> x = torch.rand(3, 1, 4, 4)
    >>> shifted, ids = apply_strong(x, ["permutation"])
    >>> torch.equal(shifted[:3], x), ids.tolist()
    (True, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    """
    transforms = strong_transforms(names)
    shifted = torch.cat([t(images) for t in transforms])
    class_ids = torch.arange(len(transforms), device=images.device).repeat_interleave(len(images))
    return shifted, class_ids
