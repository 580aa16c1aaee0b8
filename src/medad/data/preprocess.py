"""Bring decoded arrays to one square tensor layout.

Every image is resized to ``image_size x image_size`` **without keeping its aspect ratio** (a plain
square resize, as the MedIAnomaly and anomalib defaults do); images are bilinear with antialiasing,
masks nearest-neighbour (``nearest-exact``: pixel-centre aligned like the bilinear resize with
``align_corners=False``). :func:`normalize_intensity` optionally rescales each image's intensities
(``data.intensity``), like MONAI's ``ScaleIntensity`` / ``ScaleIntensityRangePercentiles``.

>>> import numpy as np
>>> to_tensor_batch([np.ones((1, 20, 10), np.float32)], 8).shape
torch.Size([1, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medad.data.readers import LUMINANCE, ImageReadError


def to_grey(images: Tensor) -> Tensor:
    """RGB ``[N, 3, H, W]`` -> grey ``[N, 1, H, W]`` with the readers' luminance weights.

    >>> to_grey(torch.ones(2, 3, 4, 4)).shape, round(float(to_grey(torch.ones(1, 3, 1, 1))), 6)
    (torch.Size([2, 1, 4, 4]), 1.0)
    """
    weights = torch.as_tensor(LUMINANCE, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def to_tensor_batch(arrays: Sequence[np.ndarray], image_size: int) -> Tensor:
    """Float ``[C, H, W]`` arrays (any sizes, same C) -> float32 ``[N, C, S, S]`` in [0, 1]."""
    if not arrays:
        raise ValueError("no images to convert")
    channels = {a.shape[0] for a in arrays}
    if len(channels) != 1:
        raise ValueError(f"images have different channel counts {sorted(channels)}")
    out = torch.empty(len(arrays), channels.pop(), image_size, image_size)
    for i, array in enumerate(arrays):
        image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        if image.shape[-2:] != (image_size, image_size):
            image = F.interpolate(
                image, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        out[i] = image[0]
    return out.clamp_(0.0, 1.0)


def resize_masks(masks: Sequence[np.ndarray], image_size: int) -> Tensor:
    """Binary ``[H, W]`` masks (any sizes) -> uint8 ``[N, 1, S, S]`` by nearest-neighbour resizing.

    >>> import numpy as np
    >>> resize_masks([np.eye(4, dtype=np.uint8)], 8)[0, 0, :2, :4].tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    out = torch.zeros(len(masks), 1, image_size, image_size, dtype=torch.uint8)
    for i, mask in enumerate(masks):
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        out[i] = F.interpolate(m, size=(image_size, image_size), mode="nearest-exact")[0].round().to(torch.uint8)
    return out


def check_mask_shape(image_id: str, image_shape: tuple[int, ...], mask_id: str, mask_shape: tuple[int, ...]) -> None:
    """Raise :class:`ImageReadError` unless the mask has its image's original ``(H, W)``."""
    if tuple(image_shape[-2:]) != tuple(mask_shape[-2:]):
        h, w = image_shape[-2:]
        mh, mw = mask_shape[-2:]
        raise ImageReadError(image_id, f"its mask {mask_id} is {mh}x{mw} pixels but the image is {h}x{w}")


Intensity = Literal["as_read", "minmax", "percentile"]
PERCENTILES = (0.5, 99.5)
_QUANTILE_MAX_ELEMENTS = 2**24  # torch.quantile refuses larger inputs


def normalize_intensity(images: Tensor, mode: Intensity) -> Tensor:
    """Rescale every image of ``[N, C, H, W]`` (all its channels together) to [0, 1].

    ``as_read`` returns the images unchanged; ``minmax`` maps each image's minimum to 0 and maximum
    to 1; ``percentile`` maps its 0.5th and 99.5th percentiles to 0 and 1 and clips, so a few hot
    pixels do not set the scale. Useful when scanners or patients differ in overall brightness (MRI).
    A constant image becomes all zeros. Both modes are idempotent (the percentiles are taken as
    pixel values, ``interpolation="lower"/"higher"``, so a second pass finds exactly 0 and 1), so
    images that pass through the model's input conversion twice are scaled once.

    >>> x = torch.tensor([[[[0.25, 0.5], [0.5, 0.75]]]])
    >>> normalize_intensity(x, "minmax").flatten().tolist()
    [0.0, 0.5, 0.5, 1.0]
    """
    if mode == "as_read":
        return images
    flat = images.flatten(1)
    if mode == "minmax":
        lo, hi = flat.min(1).values, flat.max(1).values
    elif mode == "percentile":
        rows = max(1, _QUANTILE_MAX_ELEMENTS // max(flat.shape[1], 1))
        chunks = flat.split(rows)
        lo = torch.cat([torch.quantile(c, PERCENTILES[0] / 100, dim=1, interpolation="lower") for c in chunks])
        hi = torch.cat([torch.quantile(c, PERCENTILES[1] / 100, dim=1, interpolation="higher") for c in chunks])
    else:
        raise ValueError(f"unknown intensity mode {mode!r}; use as_read, minmax or percentile")
    shape = (-1,) + (1,) * (images.ndim - 1)
    span = (hi - lo).clamp_min(1e-12).view(shape)
    return ((images - lo.view(shape)) / span).clamp(0.0, 1.0)
