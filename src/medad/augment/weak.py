"""Batched SimCLR-style "weak" augmentations on image tensors ``[N, C, H, W]`` in ``[0, 1]``.

Every sample gets its own random parameters, but each operation runs as a few whole-batch tensor
ops (geometry is one ``affine_grid`` + ``grid_sample``). All randomness comes from the optional
``generator`` (default: torch's global RNG), so a seeded generator reproduces the views exactly.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> views = WeakAugment()(torch.rand(4, 1, 32, 32), generator=g)
>>> views.shape, bool(views.min() >= 0 and views.max() <= 1)
(torch.Size([4, 1, 32, 32]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medad.data.preprocess import to_grey


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws on the generator's device, moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


def random_resized_crop_rotate_flip(
    x: Tensor,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    degrees: float = 20.0,
    hflip_p: float = 0.5,
    padding_mode: str = "reflection",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random resized crop, rotation by U(-degrees, degrees) and horizontal flip, in one warp.

    The crop covers a fraction U(scale) of the image area with aspect ratio log-uniform in
    ``ratio`` (a side longer than the image is clipped to it, where torchvision would re-draw),
    is rotated about its centre, flipped with probability ``hflip_p`` and resampled bilinearly to
    the input size. Rotated corners that leave the image are filled by ``reflection`` (default: no
    artificial black corners for the encoder to learn as "normal"; ``zeros`` is the alternative).

    >>> x = torch.rand(2, 1, 8, 8)
    >>> y = random_resized_crop_rotate_flip(x, scale=(1, 1), ratio=(1, 1), degrees=0, hflip_p=1)
    >>> torch.allclose(y, x.flip(-1), atol=1e-5)  # the warp samples within ~side * 2**-24 px
    True
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    n, _, h, w = x.shape
    u = _rand((n, 6), generator, x)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])  # crop width / height in pixels
    crop_w = torch.sqrt(area * aspect * h / w).clamp(max=1.0)  # fractions of the image side
    crop_h = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
    centre_x = (2 * u[:, 2] - 1) * (1 - crop_w)  # normalised coordinates, crop stays inside
    centre_y = (2 * u[:, 3] - 1) * (1 - crop_h)
    angle = torch.deg2rad(degrees * (2 * u[:, 4] - 1))
    flip = torch.where(u[:, 5] < hflip_p, -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> input map in normalised coordinates: flip, scale to crop, rotate in pixel space
    theta = torch.stack(
        [
            torch.stack([cos * crop_w * flip, -sin * crop_h * (h / w), centre_x], dim=1),
            torch.stack([sin * crop_w * flip * (w / h), cos * crop_h, centre_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.clamp_(0.0, 1.0)


def brightness_contrast(
    x: Tensor, brightness: float = 0.4, contrast: float = 0.4, generator: torch.Generator | None = None
) -> Tensor:
    """Multiply by U(1-b, 1+b), then scale deviations from each image's mean by U(1-c, 1+c).

    The mean is taken over all channels and pixels of the (brightness-adjusted) image; the result
    is clipped to [0, 1] after each step, like torchvision's ``ColorJitter``.

    >>> x = torch.rand(3, 1, 8, 8)
    >>> torch.allclose(brightness_contrast(x, 0.0, 0.0), x, atol=1e-6)  # (x - mean) + mean rounds at the mean
    True
    """
    n = x.shape[0]
    u = _rand((n, 2), generator, x).view(n, 2, 1, 1, 1)
    x = (x * (1 + brightness * (2 * u[:, 0] - 1))).clamp(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * (1 + contrast * (2 * u[:, 1] - 1)) + mean).clamp(0.0, 1.0)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Replace each RGB image by its luminance (repeated 3 times) with probability ``p``.

    One-channel images are already grey and are returned unchanged.

    >>> random_grayscale(torch.rand(2, 3, 4, 4), p=1.0).std(dim=1).max() < 1e-6
    tensor(True)
    """
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"random_grayscale needs 1 or 3 channels, got {x.shape[1]}")
    pick = _rand((x.shape[0],), generator, x).view(-1, 1, 1, 1) < p
    grey = to_grey(x).expand_as(x)
    return torch.where(pick, grey, x)


def gaussian_blur(
    x: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blur each image with probability ``p`` by a Gaussian of sigma ~ U(sigma) pixels.

    Separable per-sample kernels (radius ``ceil(3 * sigma_max)``) applied as one grouped
    convolution per axis with reflection padding.

    >>> x = torch.rand(2, 1, 16, 16)
    >>> torch.equal(gaussian_blur(x, p=0.0), x), gaussian_blur(x, p=1.0).std() < x.std()
    (True, tensor(True))
    """
    n, c, h, w = x.shape
    u = _rand((n, 2), generator, x)
    s = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]
    radius = min(math.ceil(3 * sigma[1]), h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * s[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, K]
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
    return torch.where(u[:, 1].view(n, 1, 1, 1) < p, y, x)


@dataclass(frozen=True)
class WeakAugment:
    """The ISBI-2022 view recipe: resized crop + rotation + flip, then brightness and contrast.

    Gholamipoor, Rafiee & Kollmann (ISBI 2022), sec. 3.2; ``grayscale_p`` and ``blur_p`` add
    SimCLR's grey-scale and blur steps and are off by default.

    >>> aug = WeakAugment(degrees=0, hflip_p=0)
    >>> aug(torch.rand(8, 3, 64, 64), generator=torch.Generator().manual_seed(1)).shape
    torch.Size([8, 3, 64, 64])
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 20.0
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    padding_mode: str = "reflection"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = random_resized_crop_rotate_flip(
            x, self.scale, self.ratio, self.degrees, self.hflip_p, self.padding_mode, generator
        )
        x = brightness_contrast(x, self.brightness, self.contrast, generator)
        if self.grayscale_p > 0:
            x = random_grayscale(x, self.grayscale_p, generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_sigma, self.blur_p, generator)
        return x
