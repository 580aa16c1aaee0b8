"""Shifting transformations that turn normal images into *negative* samples, batch-wise.

Rafiee et al. (thesis ch. 6, sec. 6.1.3 / ICANN 2022 sec. 4.1; ch. 7, sec. 2.2 of the MICCAI text)
build the negative set D_neg by applying a shifting transformation R to in-distribution (or
auxiliary) images: a change of the global layout that keeps the low-level statistics. The kinds
here, by name in :data:`NEGATIVES`:

- ``rotate90``: rotation by r ~ U{90°, 180°, 270°} ("Rot");
- ``rotate_random``: rotation by an angle ~ U(30°, 330°) ("Rot-360"; the thesis draws from
  (0°, 360°), here angles within 30° of upright are left out because they look like the normal
  orientation; the corners that leave the image are filled by reflection, so black corners do not
  give the negatives away);
- ``permute4`` / ``permute16``: the image cut into a 2x2 / 4x4 grid of equal patches, the patches
  put in a random non-identity order ("Perm-4", "Perm-16");
- ``pixel_shuffle``: a random permutation of all pixel positions of the image, every channel of a
  pixel moving together ("Pix.Perm" / "Pixel-Shuffle": the thesis shuffles single pixels, not blocks).

Every transform takes ``[N, C, H, W]`` and draws an independent shift per image from torch's global
RNG. :func:`make_negatives` gives each image one kind drawn uniformly from a list.

>>> x = torch.rand(6, 1, 8, 8)
>>> make_negatives(x, ["rotate90", "permute4"]).shape
torch.Size([6, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from medad.augment.strong import Rotation
from medad.augment.weak import random_resized_crop_rotate_flip

Negative = Callable[[Tensor], Tensor]

# rotate_random leaves out angles closer than this to 0° (mod 360°)
MIN_ANGLE = 30.0


def rotate90(x: Tensor) -> Tensor:
    """Rotate each image by 90°, 180° or 270° (uniformly, counter-clockwise); square images only.

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> any(torch.equal(rotate90(x), torch.rot90(x, k, (-2, -1))) for k in (1, 2, 3))
    True
    """
    turns = torch.randint(1, 4, (len(x),)).to(x.device)
    out = torch.empty_like(x)
    for k in (1, 2, 3):
        pick = turns == k
        out[pick] = Rotation(k)(x[pick])
    return out


def rotate_random(x: Tensor) -> Tensor:
    """Rotate each image about its centre by an angle ~ U(30°, 330°), bilinear, reflection fill.

    A 180° turn followed by a uniform rotation in ±150° (the warp of
    :func:`~medad.augment.weak.random_resized_crop_rotate_flip` with the crop set to the whole image).

    >>> rotate_random(torch.rand(3, 1, 9, 9)).shape
    torch.Size([3, 1, 9, 9])
    """
    h, w = x.shape[-2:]
    return random_resized_crop_rotate_flip(
        torch.rot90(x, 2, dims=(-2, -1)),
        scale=(1.0, 1.0),
        ratio=(w / h, w / h),  # crop = the whole image whatever its aspect
        degrees=180.0 - MIN_ANGLE,
        hflip_p=0.0,
    )


def _non_identity_permutations(n: int, size: int, device: torch.device) -> Tensor:
    """``[n, size]`` uniform random permutations of ``0..size-1``, the identity redrawn (size >= 2)."""
    perm = torch.rand(n, size).argsort(dim=1)
    identity = torch.arange(size)
    while (redraw := (perm == identity).all(dim=1)).any():
        perm[redraw] = torch.rand(int(redraw.sum()), size).argsort(dim=1)
    return perm.to(device)


def permute_patches(x: Tensor, rows: int, cols: int) -> Tensor:
    """Cut each image into a ``rows x cols`` grid of equal patches and reorder them at random.

    Each image gets its own uniformly drawn non-identity permutation. When a side is not a
    multiple of the grid, the patches are ``side // grid`` pixels and the remaining bottom rows /
    right columns stay where they are.

    >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> y = permute_patches(x, 2, 2)
    >>> sorted(y.flatten().tolist()), torch.equal(y, x)
    ([1.0, 2.0, 3.0, 4.0], False)
    """
    n, c, h, w = x.shape
    ph, pw = h // rows, w // cols
    if ph == 0 or pw == 0:
        raise ValueError(f"a {rows}x{cols} grid needs images of at least {rows}x{cols} px, got {h}x{w}")
    grid = x[..., : rows * ph, : cols * pw]
    patches = grid.reshape(n, c, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, c, ph, pw)
    perm = _non_identity_permutations(n, rows * cols, x.device)
    patches = patches[torch.arange(n, device=x.device)[:, None], perm]
    out = x.clone()
    out[..., : rows * ph, : cols * pw] = (
        patches.reshape(n, rows, cols, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * ph, cols * pw)
    )
    return out


def permute4(x: Tensor) -> Tensor:
    """Perm-4: the four quarters of each image in a random non-identity order (23 possibilities)."""
    return permute_patches(x, 2, 2)


def permute16(x: Tensor) -> Tensor:
    """Perm-16: the 4x4 grid of patches of each image in a random non-identity order."""
    return permute_patches(x, 4, 4)


def pixel_shuffle(x: Tensor) -> Tensor:
    """Pix.Perm: a random permutation of the pixel positions of each image (channels move together).

    >>> x = torch.rand(2, 3, 5, 5)
    >>> torch.equal(pixel_shuffle(x).flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
    True
    """
    return permute_patches(x, x.shape[-2], x.shape[-1])


NEGATIVES: dict[str, Negative] = {
    "rotate90": rotate90,
    "rotate_random": rotate_random,
    "permute4": permute4,
    "permute16": permute16,
    "pixel_shuffle": pixel_shuffle,
}


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """``kinds`` as a list, after checking it is non-empty, known and without repeats.

    >>> check_kinds(("rotate90",))
    ['rotate90']
    """
    unknown = [k for k in kinds if k not in NEGATIVES]
    if unknown or not kinds:
        raise ValueError(f"unknown negative kinds {unknown}; choose one or more of {sorted(NEGATIVES)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"negative kinds must not repeat, got {list(kinds)}")
    return list(kinds)


def make_negatives(images: Tensor, kinds: Sequence[str]) -> Tensor:
    """One negative per image of ``images [N, C, H, W]``: each gets a kind drawn uniformly from ``kinds``.

    >>> x = torch.rand(4, 1, 8, 8)
    >>> y = make_negatives(x, ["pixel_shuffle"])
    >>> torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values), torch.equal(y, x)
    (True, False)
    """
    kinds = check_kinds(kinds)
    choice = torch.randint(len(kinds), (len(images),)).to(images.device)
    out = torch.empty_like(images)
    for i, kind in enumerate(kinds):
        pick = choice == i
        if pick.any():
            out[pick] = NEGATIVES[kind](images[pick])
    return out
