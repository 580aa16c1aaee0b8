"""Small models and parameter sets shared by several test modules (not a test module itself)."""

from __future__ import annotations

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from torch import nn

# fastest settings that still exercise every part of these detectors
TINY_DETECTOR_PARAMS = {
    "igd": {"epochs": 1, "batch_size": 4, "decoder_width": 4, "critic_width": 4, "patches_per_image": 2},
    "fanogan": {"epochs": 2, "batch_size": 4, "latent_dim": 8, "width": 4, "critic_iters": 2},
}


class ToyEncoder(nn.Module):
    """A convolution and a 2x2 average pool: any image size in, 8-d out."""

    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dicom_dataset(pixels: np.ndarray | None, bits: int = 16, sop_class: str = SecondaryCaptureImageStorage,
                  **attributes) -> Dataset:
    """A single-frame DICOM dataset, ready for ``save_as(..., enforce_file_format=True)``: file meta
    (explicit VR little endian), ``sop_class`` with a new instance UID, ``pixels`` (uint16 ``[H, W]``,
    MONOCHROME2, ``bits`` stored; None: no pixel data) and ``attributes`` (None deletes one)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    if pixels is not None:
        ds.set_pixel_data(pixels, "MONOCHROME2", bits)
    for key, value in attributes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds
