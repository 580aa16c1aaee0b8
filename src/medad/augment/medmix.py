"""MedMix: synthetic "lesions" cut from one normal image, deformed and pasted into another.

Tian et al., PMSACL, sec. 3.1 and 4.2 (``../shared/papers/001_13f928cbfde55ea4.txt``). Class
A_n of the pseudo multi-class task holds images with n synthetic lesions (A_0: none). One lesion is
a rectangle cut at a random position of a random *other* image of the batch, altered with
probability 0.25 each (the paper's value) by

- colour jitter: brightness x U(1-b, 1+b), then contrast x U(1-c, 1+c) around the patch mean;
- Gaussian noise with sigma ~ U(noise_std);
- a fisheye warp: three Gaussian "lenses" at random control points pull the sampling grid towards
  them, magnifying the patch around each point;
- a horizontal-wave warp: rows are shifted sideways by a smooth profile through three random
  control points (row, shift);

and pasted at a random position of the target image. The paper pastes anywhere, without blending
and without a foreground restriction, and that is the default. Two options fix what that does to
images with a dark background (on LGG at 64 px most pastes land on background or cut a black
square, docs/methods/pmsacl.md):

- ``foreground`` (a share of each image's 99th percentile, as ``medad.detectors.maps``): the cut
  and the paste positions are each the best of ``PLACE_TRIES`` random candidates by foreground
  share, and the lesion only replaces foreground pixels of the target;
- ``feather`` (a share of the patch's shorter half-side): the lesion is alpha-blended in over a
  linear ramp of that width at its border instead of pasted with a hard edge.

Both warps are one ``grid_sample`` that only reads pixels of the cut patch.

Choices the paper leaves open (see ``docs/methods/pmsacl.md``): a lesion's height and width are
independently U(``size``) of the image side (default 0.1-0.25). Lesions never overlap or touch:
the image is split into a g x g grid of cells (g = ceil(sqrt(max_lesions))) and each lesion of an
image sits in its own random cell, at a random position that keeps one free pixel row and column
at the cell's far edges. Every lesion is therefore its own 8-connected region of the mask, so an
image of class n has exactly n regions (with ``foreground``, a lesion cut by the target's
foreground edge may split into several, or vanish where its cell holds no foreground).

All randomness comes from ``generator`` (default: torch's global RNG) and the number of draws does
not depend on the probabilities, so one seed gives the same geometry with alterations on or off.

>>> import torch
>>> images = torch.rand(4, 1, 32, 32)
>>> mixed, masks = medmix(images, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
>>> mixed.shape, masks.dtype, bool(masks[0].any()), bool(masks[3].any())
(torch.Size([4, 1, 32, 32]), torch.uint8, False, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from medad.augment.weak import _rand

# uniform draws per lesion slot; named slices of one [N, _DRAWS] tensor (see MedMix._lesion)
PLACE_TRIES = 4  # candidate cut / paste positions per lesion (the first is used without a foreground)
_SPLITS = {
    "size": 2, "place": 2 * PLACE_TRIES, "source": 1, "source_place": 2 * PLACE_TRIES, "gates": 4, "jitter": 2,
    "noise": 1, "lens_points": 6, "lens_strength": 3, "wave_rows": 3, "wave_shift": 3,
}
_DRAWS = sum(_SPLITS.values())
_CONTROL_WIDTH = 0.5  # Gaussian width of a control point's influence, in patch half-sides


def lesion_classes(n: int, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A balanced random class (number of lesions) in ``0..num_classes-1`` for each of ``n`` images.

    Every class gets ``n // num_classes`` or one more images; which classes get one more, and which
    image gets which class, is random.

    >>> sorted(lesion_classes(8, 4, torch.Generator().manual_seed(0)).tolist())
    [0, 0, 1, 1, 2, 2, 3, 3]
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    offset = torch.randint(num_classes, (1,), generator=generator, device=_device(generator)).cpu()
    order = torch.randperm(n, generator=generator, device=_device(generator)).cpu()
    return (order + offset) % num_classes


@dataclass(frozen=True)
class MedMix:
    """Paste ``n_lesions[i]`` synthetic lesions into image i; returns the images and a mask of them.

    ``max_lesions`` fixes the placement grid (so placement does not depend on the batch); asking
    for more lesions is an error. ``jitter_p``, ``noise_p``, ``fisheye_p`` and ``wave_p`` are the
    probabilities of the four alterations, drawn independently per lesion.

    >>> mix = MedMix(jitter_p=0, noise_p=0, fisheye_p=0, wave_p=0)
    >>> x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    >>> out, masks = mix(x, torch.tensor([2, 0]))
    >>> torch.equal(out[0].bool(), masks[0].bool()), torch.equal(out[1], x[1])
    (True, True)
    """

    size: tuple[float, float] = (0.1, 0.25)
    max_lesions: int = 3
    jitter_p: float = 0.25
    noise_p: float = 0.25
    fisheye_p: float = 0.25
    wave_p: float = 0.25
    brightness: float = 0.5
    contrast: float = 0.5
    noise_std: tuple[float, float] = (0.03, 0.1)
    lens_strength: tuple[float, float] = (0.2, 0.6)
    wave_shift: float = 0.3
    foreground: float | None = None
    feather: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.size[0] <= self.size[1] <= 1:
            raise ValueError(f"size must satisfy 0 < min <= max <= 1, got {self.size}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {self.max_lesions}")
        if not 0 <= self.feather <= 1:
            raise ValueError(f"feather must lie in [0, 1], got {self.feather}")

    @property
    def grid(self) -> int:
        """Cells per side of the placement grid."""
        return math.ceil(math.sqrt(self.max_lesions))

    def __call__(
        self, images: Tensor, n_lesions: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``images [N, C, H, W]`` in [0, 1] and ``n_lesions [N]`` → (mixed images, uint8 masks ``[N, 1, H, W]``)."""
        n, _, h, w = images.shape
        # checked where the counts were made (on the host, for free) before they move to the images
        counts = torch.as_tensor(n_lesions, dtype=torch.long).reshape(-1)
        if len(counts) != n:
            raise ValueError(f"n_lesions has {len(counts)} entries for {n} images")
        if n and (counts.min() < 0 or counts.max() > self.max_lesions):
            raise ValueError(f"n_lesions must lie in 0..{self.max_lesions}, got {counts.tolist()}")
        slots = int(counts.max()) if n else 0
        counts = counts.to(images.device)
        masks = torch.zeros(n, 1, h, w, dtype=torch.bool, device=images.device)
        if slots == 0:
            return images.clone(), masks.to(torch.uint8)
        if n < 2:
            raise ValueError("MedMix cuts lesions from another image of the batch: it needs at least 2 images")
        if min(h, w) < 4 * self.grid:
            raise ValueError(f"MedMix with max_lesions={self.max_lesions} needs images of at least {4 * self.grid} px")
        cells = _rand((n, self.grid**2), generator, images).argsort(dim=1)[:, :slots]  # a distinct cell per lesion
        fg = None if self.foreground is None else foreground_of(images, self.foreground)
        out = images
        for slot in range(slots):
            lesion, inside, alpha = self._lesion(images, cells[:, slot], generator, fg)
            inside = inside & (counts > slot).view(n, 1, 1, 1)
            out = torch.where(inside, alpha * lesion + (1 - alpha) * out, out)
            masks |= inside
        return out, masks.to(torch.uint8)

    def _lesion(
        self, images: Tensor, cell: Tensor, generator: torch.Generator | None, fg: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One lesion per image, in ``cell``: the full-size image holding it, its mask and its
        blending weight (all ``[N, 1, H, W]``); ``fg`` is the images' foreground or None."""
        n, _, h, w = images.shape
        u = dict(zip(_SPLITS, _rand((n, _DRAWS), generator, images).split(list(_SPLITS.values()), dim=1)))
        noise = torch.randn(images.shape, generator=generator, device=_device(generator)).to(images)
        g, side = self.grid, torch.tensor([h, w], device=images.device)
        cell_lo = torch.stack([cell // g, cell % g], dim=1) * side // g  # [N, 2] (row, column)
        cell_len = (torch.stack([cell // g, cell % g], dim=1) + 1) * side // g - cell_lo
        # patch extent: a fraction of the side, at most the cell minus one free pixel row/column
        extent = self.size[0] + (self.size[1] - self.size[0]) * u["size"]
        patch = (extent * side).round().long().clamp(min=1)
        patch = torch.minimum(patch, cell_len - 1)
        corners = cell_lo[:, None] + (u["place"].view(n, PLACE_TRIES, 2) * (cell_len - patch)[:, None]).long()
        source = (torch.arange(n, device=images.device) + 1 + (u["source"][:, 0] * (n - 1)).long()) % n
        source_corners = (u["source_place"].view(n, PLACE_TRIES, 2) * (side - patch + 1)[:, None]).long()
        corner, source_corner = corners[:, 0], source_corners[:, 0]
        if fg is not None:
            corner = _most_foreground(fg, corners, patch)
            source_corner = _most_foreground(fg[source], source_corners, patch)

        # patch coordinates of every pixel: pixel centres of the patch span [-1 + 1/len, 1 - 1/len]
        pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).to(images)  # [2, H, W]
        pp = (2 * (pos[None] - corner[:, :, None, None]) + 1) / patch[:, :, None, None] - 1  # [N, 2, H, W]
        inside = (pp.abs() < 1).all(dim=1, keepdim=True)
        alpha = torch.ones_like(inside, dtype=images.dtype)
        if self.feather > 0:  # pixels to the patch border, ramped over ``feather`` x the shorter half-side
            half = patch[:, :, None, None] / 2
            border = ((1 - pp.abs()) * half).amin(dim=1, keepdim=True)
            ramp = self.feather * half.amin(dim=1, keepdim=True)
            alpha = (border / ramp).clamp(0.0, 1.0)
        if fg is not None:
            inside = inside & fg[:, None]
        gates = u["gates"] < torch.tensor([self.jitter_p, self.noise_p, self.fisheye_p, self.wave_p]).to(images)
        pp = self._warp(pp, u, gates[:, 2], gates[:, 3])
        lo = (1 / patch - 1)[:, :, None, None]
        pp = torch.maximum(torch.minimum(pp, -lo), lo)  # read only pixels of the cut patch
        src = source_corner[:, :, None, None] + (pp + 1) * patch[:, :, None, None] / 2 - 0.5  # source pixel coords
        grid = (2 * src + 1) / side.view(1, 2, 1, 1) - 1
        grid = grid.flip(1).permute(0, 2, 3, 1)  # [N, H, W, (x, y)]
        lesion = F.grid_sample(images[source], grid, mode="bilinear", padding_mode="border", align_corners=False)
        lesion = torch.where(gates[:, 0].view(n, 1, 1, 1), self._jitter(lesion, inside, u["jitter"]), lesion)
        std = self.noise_std[0] + (self.noise_std[1] - self.noise_std[0]) * u["noise"]
        noisy = (lesion + std.view(n, 1, 1, 1) * noise).clamp(0.0, 1.0)
        return torch.where(gates[:, 1].view(n, 1, 1, 1), noisy, lesion), inside, alpha

    def _warp(self, pp: Tensor, u: dict[str, Tensor], lens: Tensor, wave: Tensor) -> Tensor:
        """Map patch coordinates ``pp [N, 2, H, W]`` (row, column) through the wave, then the fisheye."""
        n = len(pp)
        rows = (2 * u["wave_rows"] - 1).view(n, 3, 1, 1)
        shift = (self.wave_shift * (2 * u["wave_shift"] - 1)).view(n, 3, 1, 1)
        profile = (shift * _bump(pp[:, :1] - rows)).sum(dim=1)  # [N, H, W] sideways shift per row
        pp = pp + wave.view(n, 1, 1, 1) * torch.stack([torch.zeros_like(profile), profile], dim=1)
        points = (u["lens_points"] - 0.5).view(n, 3, 2, 1, 1)  # control points in the middle half
        strength = self.lens_strength[0] + (self.lens_strength[1] - self.lens_strength[0]) * u["lens_strength"]
        toward = points - pp[:, None]  # [N, 3, 2, H, W]
        pull = strength.view(n, 3, 1, 1, 1) * _bump(toward.norm(dim=2, keepdim=True)) * toward
        return pp + lens.view(n, 1, 1, 1) * pull.sum(dim=1)

    def _jitter(self, x: Tensor, inside: Tensor, u: Tensor) -> Tensor:
        """Brightness then contrast around the mean of the patch pixels (``inside``), clipped to [0, 1]."""
        n = len(x)
        factors = 1 + torch.tensor([self.brightness, self.contrast]).to(x) * (2 * u - 1)
        x = (x * factors[:, 0].view(n, 1, 1, 1)).clamp(0.0, 1.0)
        weight = inside.to(x).expand_as(x)
        mean = (x * weight).sum(dim=(1, 2, 3), keepdim=True) / weight.sum(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * factors[:, 1].view(n, 1, 1, 1) + mean).clamp(0.0, 1.0)


def foreground_of(images: Tensor, threshold: float) -> Tensor:
    """``[N, H, W]`` bool: pixels whose channel mean exceeds ``threshold`` x the image's 99th percentile.

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1:3, 1:3] = 1
    >>> int(foreground_of(x, 0.1).sum())
    4
    """
    mean = images.mean(dim=1)
    level = torch.quantile(mean.flatten(1).float(), 0.99, dim=1).to(mean.dtype)
    return mean > threshold * level.view(-1, 1, 1)


def _most_foreground(fg: Tensor, corners: Tensor, patch: Tensor) -> Tensor:
    """The candidate top-left corner ``corners [N, T, 2]`` whose ``patch [N, 2]`` box holds the
    most foreground pixels of ``fg [N, H, W]`` (the first on ties), ``[N, 2]``."""
    n, t, _ = corners.shape
    integral = F.pad(fg.to(torch.float64).cumsum(1).cumsum(2), (1, 0, 1, 0))  # [N, H+1, W+1]
    flat = integral.flatten(1)
    width = integral.shape[-1]

    def at(r: Tensor, c: Tensor) -> Tensor:
        return flat.gather(1, r * width + c)

    r0, c0 = corners[..., 0], corners[..., 1]
    r1, c1 = r0 + patch[:, None, 0], c0 + patch[:, None, 1]
    count = at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)  # [N, T]
    best = count.argmax(dim=1)  # argmax returns the first maximum
    return corners[torch.arange(n, device=corners.device), best]


def _bump(d: Tensor) -> Tensor:
    """Gaussian influence exp(-d^2 / (2 w^2)) of a control point at distance ``d`` (patch units)."""
    return torch.exp(-(d**2) / (2 * _CONTROL_WIDTH**2))


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


medmix = MedMix()
"""MedMix with the default settings: ``medmix(images, n_lesions, generator=None)``."""


def save_medmix_grid(
    images: Tensor, path: str | Path, seed: int = 0, columns: int = 4, scale: int = 3, mix: MedMix = medmix
) -> Path:
    """PNG grid of MedMix examples: one row per image, columns with 0 .. ``columns - 1`` lesions.

    Lesion outlines are drawn in red; images are enlarged ``scale`` times (nearest neighbour).
    Lesions come from the other rows. Returns the path.

    >>> import tempfile
    >>> from medad.data.synthetic import make_phantoms
    >>> out = save_medmix_grid(make_phantoms(3, 32, seed=0)[0], Path(tempfile.mkdtemp()) / "grid.png")
    >>> Image.open(out).size
    (394, 296)
    """
    n = len(images)
    g = torch.Generator().manual_seed(seed)
    mix = replace(mix, max_lesions=max(columns - 1, 1))
    cols = []
    for k in range(columns):
        mixed, masks = mix(images, torch.full((n,), k), generator=g)
        cols.append(_outlined(mixed, masks, scale))
    gap = 2
    tiles = torch.stack(cols, dim=1)  # [N, columns, 3, h, w]
    th, tw = tiles.shape[-2:]
    canvas = torch.ones(3, n * (th + gap) + gap, columns * (tw + gap) + gap)
    for i in range(n):
        for k in range(columns):
            top, left = gap + i * (th + gap), gap + k * (tw + gap)
            canvas[:, top : top + th, left : left + tw] = tiles[i, k]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path, optimize=True)
    return path


def _outlined(images: Tensor, masks: Tensor, scale: int) -> Tensor:
    """RGB copies of ``images``, enlarged ``scale`` times, with the mask borders in red."""
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    rgb = F.interpolate(rgb, scale_factor=scale, mode="nearest")
    m = F.interpolate(masks.float(), scale_factor=scale, mode="nearest")
    border = (m - -F.max_pool2d(-m, 3, stride=1, padding=1)) > 0  # mask minus its erosion
    red = torch.tensor([1.0, 0.1, 0.1]).view(1, 3, 1, 1)
    return torch.where(border, red, rgb)
