"""The one way from a file, folder, array or tensor to the model's input layout.

A :class:`Preprocessor` is built from the data config (:meth:`Preprocessor.from_config`), saved in
a model's metadata (:meth:`Preprocessor.metadata`, ``model.json`` and an exported graph's
``input``) and used by everything that hands images to a model: ``AnomalyDetector.prepare``,
``medad predict`` (:meth:`read_files`), an exported ONNX model and DINO's auxiliary negatives.
Files are decoded by :mod:`medad.data.readers` (channels, NIfTI slices) and resized square by
:mod:`medad.data.preprocess`; calling the preprocessor then converts whatever it gets — paths,
an :class:`ImageSet`, uint8 or float arrays and tensors ``[N, C, H, W]`` / ``[N, H, W]`` — to
float32 ``[N, C, S, S]`` in [0, 1] with ``intensity`` applied per image.

>>> import numpy as np
>>> pre = Preprocessor(image_size=8, channels=1, intensity="minmax")
>>> x = pre(np.full((2, 3, 20, 10), 100, np.uint8))  # RGB uint8 -> grey, resized, min-max per image
>>> x.shape, x.dtype
(torch.Size([2, 1, 8, 8]), torch.float32)
>>> Preprocessor.from_metadata(pre.metadata()) == pre
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medad.config import DataConfig
from medad.data.folder import FileItem, Loaded, load_files
from medad.data.imageset import ImageSet
from medad.data.preprocess import Intensity, normalize_intensity, to_grey
from medad.data.readers import NiftiSlices, list_image_files

RESIZE = "square, bilinear with antialias"


@dataclass(frozen=True)
class Preprocessor:
    """Image size, channels, per-image intensity scaling and NIfTI slices of a model's input."""

    image_size: int
    channels: int
    intensity: Intensity = "as_read"
    nifti_slices: NiftiSlices = "middle"

    @classmethod
    def from_config(cls, data: DataConfig) -> Preprocessor:
        return cls(data.image_size, data.channels, data.intensity, data.nifti_slices)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Preprocessor:
        """The preprocessor recorded by :meth:`metadata`."""
        return cls(meta["image_size"], meta["channels"], meta.get("intensity", "as_read"),
                   meta.get("nifti_slices", "middle"))

    def metadata(self) -> dict[str, Any]:
        """JSON-ready record of this preprocessing (saved with models and exported graphs)."""
        return {**asdict(self), "resize": RESIZE}

    def read(self, paths: Sequence[str | Path], on_error: str = "raise") -> ImageSet:
        """Image files, and the images directly inside folders, at this size and channels
        (labels -1); an error when none can be read."""
        files = [f for p in map(Path, paths) for f in (list_image_files(p) if p.is_dir() else [p])]
        loaded = self.read_files([FileItem(f) for f in files], on_error)
        if len(loaded.images) == 0:
            raise ValueError(f"none of the {len(files)} given images could be read")
        return loaded.images

    def read_files(self, items: Sequence[FileItem], on_error: str = "raise") -> Loaded:
        """:func:`medad.data.folder.load_files` at this size and channels (``medad predict``)."""
        return load_files(items, image_size=self.image_size, channels=self.channels,
                          nifti_slices=self.nifti_slices, on_error=on_error)

    def __call__(self, images: Any) -> Tensor:
        """``images`` in the model's layout: float32 ``[N, C, S, S]`` in [0, 1], intensity applied."""
        if isinstance(images, (str, Path)):
            images = self.read([images])
        x = images.images if isinstance(images, ImageSet) else torch.as_tensor(np.asarray(images))
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or Inf values")
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif x.shape[1] == 3 and self.channels == 1:
                x = to_grey(x)
            else:
                raise ValueError(f"cannot convert {x.shape[1]}-channel images to {self.channels} channels")
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return normalize_intensity(x.clamp(0, 1), self.intensity).contiguous()
