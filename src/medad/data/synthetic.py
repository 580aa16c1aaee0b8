"""Deterministic "organ" phantoms for the demo and the tests.

A phantom is a body ellipse with smooth texture (upsampled coarse noise), one or two inner organ
ellipses of different brightness, mild acquisition noise and a small random shift/rotation/scale.
A lesion is one or two irregular blobs (an ellipse with a noise-perturbed border) **inside an
organ**, brighter or darker than the organ by 0.12-0.18 (the organ-to-body contrast is about 0.15-0.2,
the texture +-0.05). The mask marks exactly the pixels a lesion changed: the same seed with and
without ``lesion`` gives images that differ exactly on the mask (no pixel is clipped).

>>> images, masks = make_phantoms(2, 32, seed=0, lesion=True)
>>> images.shape, masks.shape, bool(masks.flatten(1).any(1).all())
(torch.Size([2, 1, 32, 32]), torch.Size([2, 1, 32, 32]), True)

:func:`dicom_dataset` wraps such pixels in a single-frame DICOM dataset, for the tests and
benchmarks of the DICOM paths:

>>> ds = dicom_dataset(np.zeros((8, 8), np.uint16), 12, PatientID="P1")
>>> ds.Rows, ds.BitsStored, ds.PatientID
(8, 12, 'P1')
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from torch import Tensor

MIN_PHANTOM_SIZE = 16
README_MARK = "medad phantom dataset"

# body frame coordinates in [-1, 1]: organ centres, semi-axes and brightness
_ORGAN_CENTRES = np.array([[-0.32, 0.02], [0.34, -0.08]])
_ORGAN_RADII = np.array([[0.26, 0.36], [0.22, 0.28]])
_ORGAN_LEVELS = np.array([0.62, 0.33])
_BODY_LEVEL = 0.47


def make_phantoms(n: int, size: int, seed: int, lesion: bool = False) -> tuple[Tensor, Tensor]:
    """``n`` phantoms: float32 ``[n, 1, size, size]`` in [0, 1] and uint8 lesion masks (zeros if no lesion).

    Computed with numpy (single-threaded, so it stays fast on busy machines) from ``default_rng(seed)``.
    """
    if size < MIN_PHANTOM_SIZE:
        raise ValueError(f"phantom size must be at least {MIN_PHANTOM_SIZE}, got {size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    axis = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)  # pixel centres in [-1, 1]

    def smooth_noise(cells: int) -> np.ndarray:  # [n, S, S]: Gaussian-interpolated coarse noise, in (-1, 1)
        grid = np.linspace(-1.2, 1.2, cells, dtype=np.float32)
        weights = np.exp(-0.5 * ((axis[:, None] - grid[None]) / (0.6 * (grid[1] - grid[0]))) ** 2)
        weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))  # unit variance per pixel
        return np.tanh(weights @ rng.standard_normal((n, cells, cells), dtype=np.float32) @ weights.T)

    # every random number is drawn whether or not ``lesion`` is set, so both variants share them
    shift = (rng.random((n, 2)) - 0.5) * 0.1
    angle = (rng.random(n) - 0.5) * 0.3
    scale = 0.95 + 0.1 * rng.random(n)
    centres = _ORGAN_CENTRES + (rng.random((n, 2, 2)) - 0.5) * 0.08
    radii = _ORGAN_RADII * (0.9 + 0.2 * rng.random((n, 2, 2)))
    levels = _ORGAN_LEVELS + (rng.random((n, 2)) - 0.5) * 0.06
    second_organ = rng.random(n) < 0.5
    texture = 0.05 * smooth_noise(6)
    acquisition = 0.02 * np.clip(rng.standard_normal((n, size, size), dtype=np.float32), -3, 3)
    blob_organ = ((rng.random((n, 2)) < 0.5) & second_organ[:, None]).astype(int)  # organ index of each blob
    blob_polar = rng.random((n, 2, 2))  # radius fraction and angle of the blob centre inside its organ
    blob_radii = np.maximum(0.07 + 0.08 * rng.random((n, 2, 2)), 3.0 / size)
    blob_border = [smooth_noise(5) for _ in range(2)]
    second_blob = rng.random(n) < 0.5
    contrast = (0.12 + 0.06 * rng.random(n)) * np.where(rng.random(n) < 0.5, -1.0, 1.0)

    def col(v: np.ndarray) -> np.ndarray:  # one value per phantom, broadcast over its pixels
        return np.asarray(v, dtype=np.float32)[:, None, None]

    # pixel centres moved into each phantom's body frame: [n, S, S]
    x0, y0 = axis[None, None, :] - col(shift[:, 0]), axis[None, :, None] - col(shift[:, 1])
    cos, sin = col(np.cos(angle)), col(np.sin(angle))
    bx, by = (cos * x0 + sin * y0) / col(scale), (-sin * x0 + cos * y0) / col(scale)
    pixel = 2.0 / size

    def radius(centre: np.ndarray, axes: np.ndarray) -> np.ndarray:  # elliptic radius, 1 on the border
        dx = (bx - col(centre[:, 0])) / col(axes[:, 0])
        dy = (by - col(centre[:, 1])) / col(axes[:, 1])
        return np.sqrt(dx**2 + dy**2)

    def soft(r: np.ndarray, axes: np.ndarray) -> np.ndarray:  # ~1.5 pixel wide edge
        return 0.5 + 0.5 * np.tanh((1 - r) * col(axes.min(axis=1)) / (1.5 * pixel))  # sigmoid(x / 0.75px)

    body_axes = np.tile([[0.82, 0.66]], (n, 1))
    image = soft(radius(np.zeros((n, 2)), body_axes), body_axes) * (_BODY_LEVEL + texture)
    organ_r = []
    for k in range(2):
        r = radius(centres[:, k], radii[:, k])
        weight = soft(r, radii[:, k]) * (col(second_organ) if k else 1.0)
        image = image * (1 - weight) + weight * (col(levels[:, k]) + texture)
        organ_r.append(r)

    mask = np.zeros((n, size, size), dtype=bool)
    if lesion:
        rows = np.arange(n)
        for b in range(2):
            k = blob_organ[:, b]
            centre, axes = centres[rows, k], radii[rows, k]
            rho, phi = 0.35 * blob_polar[:, b, 0], 2 * np.pi * blob_polar[:, b, 1]
            blob_centre = centre + np.stack([rho * np.cos(phi), rho * np.sin(phi)], axis=1) * axes
            inside_organ = np.where(col(k) == 1, organ_r[1], organ_r[0]) < 0.9
            blob = radius(blob_centre, blob_radii[:, b]) < 1 + 0.3 * blob_border[b]
            mask |= blob & inside_organ & (second_blob[:, None, None] if b else True)
        image = image + col(contrast) * mask
    images = np.clip(image + acquisition, 0, 1).astype(np.float32)
    return torch.from_numpy(images[:, None]), torch.from_numpy(mask[:, None].astype(np.uint8))


def write_phantom_dataset(
    out_dir: str | Path,
    n_train: int = 200,
    n_test_normal: int = 50,
    n_test_abnormal: int = 50,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write an MVTec-layout folder of 8-bit PNG phantoms; the same seed gives byte-identical files.

    Layout: ``train/good``, ``test/good``, ``test/lesion``, ``ground_truth/lesion/<stem>_mask.png``
    (0/255) and a README.txt. An existing phantom folder is replaced; any other non-empty folder is
    refused.

    >>> import tempfile
    >>> root = write_phantom_dataset(tempfile.mkdtemp() + "/ph", 4, 2, 2, size=16)
    >>> sorted(p.name for p in (root / "test").iterdir())
    ['good', 'lesion']
    """
    out = Path(out_dir)
    readme = out / "README.txt"
    if out.exists() and any(out.iterdir()):
        if not (readme.is_file() and README_MARK in readme.read_text()):
            raise ValueError(f"{out} is not empty and not a medad phantom dataset; choose another folder")
        for part in ("train", "test", "ground_truth"):
            shutil.rmtree(out / part, ignore_errors=True)
    seeds = np.random.SeedSequence(seed).generate_state(3)
    parts = [
        ("train/good", n_train, int(seeds[0]), False),
        ("test/good", n_test_normal, int(seeds[1]), False),
        ("test/lesion", n_test_abnormal, int(seeds[2]), True),
    ]
    for folder, n, part_seed, lesion in parts:
        images, masks = make_phantoms(n, size, part_seed, lesion=lesion)
        (out / folder).mkdir(parents=True, exist_ok=True)
        pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(out / folder / f"{i:04d}.png")
        if lesion:
            (out / "ground_truth/lesion").mkdir(parents=True, exist_ok=True)
            for i, mask in enumerate(masks[:, 0].numpy() * 255):
                Image.fromarray(mask).save(out / "ground_truth/lesion" / f"{i:04d}_mask.png")
    readme.write_text(
        f"{README_MARK} (synthetic, no patient data)\n"
        f"written by medad.data.synthetic.write_phantom_dataset(seed={seed}, size={size})\n"
        f"train/good: {n_train} normal phantoms; test/good: {n_test_normal}; test/lesion: {n_test_abnormal} "
        "phantoms with 1-2 lesions inside an organ\n"
        "ground_truth/lesion/<stem>_mask.png: the changed pixels (255) of each lesion image\n"
    )
    return out


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
