"""Writing results in the geometry of the file they came from: anomaly maps of NIfTI slices back
into a NIfTI volume that overlays its input in a viewer (ITK-SNAP, 3D Slicer, FSLeyes), and any
map back to its source image's size (:func:`resize_map`; DICOM outputs: :mod:`medad.data.dicom_outputs`).

The reader (:mod:`medad.data.readers`) turns slice ``z`` of a volume into the image
``rot90(volume[:, :, z])`` and resizes it to the model's square size; :func:`write_nifti_maps`
undoes both — a bilinear resize to the slice's shape, the inverse rotation — and writes the slices
with the input's affine. Slices that were not scored (``data.nifti_slices``
``middle`` or an index) are 0.

>>> import tempfile, nibabel as nib, numpy as np
>>> folder = Path(tempfile.mkdtemp())
>>> nib.save(nib.Nifti1Image(np.zeros((6, 4, 3), np.float32), np.diag([2.0, 2, 3, 1])), folder / "v.nii.gz")
>>> out = write_nifti_maps(folder / "v.nii.gz", {1: np.ones((8, 8), np.float32)}, folder / "map.nii.gz")
>>> saved = nib.load(out)
>>> data = saved.get_fdata()
>>> saved.shape, float(data[:, :, 1].min()), float(data[:, :, 0].max()), float(saved.affine[2, 2])
((6, 4, 3), 1.0, 0.0, 3.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F


def slice_index(image_id: str) -> int | None:
    """The slice number of a NIfTI image id (``path#z=K``), None for other ids.

    >>> slice_index("a/v.nii.gz#z=12"), slice_index("a/b.png")
    (12, None)
    """
    _, _, part = image_id.partition("#z=")
    return int(part) if part.isdigit() else None


def resize_map(anomaly_map: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A map at the model's size brought back to an image of ``rows`` x ``cols`` pixels (bilinear,
    pixel centres aligned as in the reader's resize), float32; the same size is returned unchanged.
    A lesion mask in the source's geometry is this map above the pixel threshold (NIfTI and DICOM
    outputs alike).

    >>> resize_map(np.array([[0.0, 1.0]]), 2, 4).tolist()
    [[0.0, 0.25, 0.75, 1.0], [0.0, 0.25, 0.75, 1.0]]
    """
    tensor = torch.as_tensor(np.asarray(anomaly_map, np.float32))[None, None]
    return F.interpolate(tensor, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0].numpy()


def write_nifti_maps(
    reference: str | Path, slices: Mapping[int, np.ndarray], out: str | Path, threshold: float | None = None
) -> Path:
    """Write ``slices`` (slice index → map ``[S, S]`` at the model's size) as a float32 volume
    shaped like the 3-D (or 4-D: first volume) NIfTI file ``reference``, with its affine; with
    ``threshold``, the uint8 mask ``map > threshold`` taken after the resize. Returns ``out``."""
    source = nib.load(reference)
    shape = source.shape[:3] if len(source.shape) >= 3 else (*source.shape, 1)
    volume = np.zeros(shape, dtype=np.float32 if threshold is None else np.uint8)
    for z, slice_map in slices.items():
        resized = resize_map(slice_map, shape[1], shape[0])  # rot90(volume[:, :, z]) is [Y, X]
        volume[:, :, z] = np.rot90(resized if threshold is None else resized > threshold, k=-1)
    image = nib.Nifti1Image(volume, source.affine)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, out)
    return out
