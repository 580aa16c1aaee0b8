"""MedMNIST ``.npz`` files read from a local path.

A MedMNIST file holds ``train_images``, ``val_images``, ``test_images`` (uint8 ``[N, H, W]`` or
``[N, H, W, 3]``) and ``*_labels`` (``[N]`` or ``[N, 1]``). One label value means "normal"; it is
known for pneumoniamnist (0) and breastmnist (1), otherwise ``normal_label`` must be given. Every
other label is abnormal (its ``defect`` is the class name when known, else ``label_<k>``).

How medad uses the splits: training normals come from ``train``; validation normals (thresholds,
model selection) are the **normals** of MedMNIST's own ``val`` split - the labels of its abnormal
images are never used unless the labelled-validation threshold is asked for (``data.labelled_val``
pointing at the ``.npz``); ``test`` is the test set. Ids are ``path#split/index``.

>>> import tempfile, numpy as np
>>> path = tempfile.mkdtemp() + "/demo.npz"
>>> np.savez(path, **{f"{s}_{k}": np.zeros((2, 8, 8), np.uint8) if k == "images" else np.array([0, 1])
...                   for s in ("train", "val", "test") for k in ("images", "labels")})
>>> data = load_medmnist(path, normal_label=0)
>>> images, hashes = data.imageset("test", image_size=16, channels=1)
>>> images.images.shape, images.labels.tolist(), images.defects
(torch.Size([2, 1, 16, 16]), [0, 1], ['good', 'label_1'])
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medad.data.imageset import ABNORMAL, NORMAL, UNKNOWN, ImageSet
from medad.data.preprocess import to_tensor_batch
from medad.data.readers import MIN_SIDE, ImageReadError, to_channels
from medad.files import unreadable_arrays

log = logging.getLogger("medad.data")

SPLITS = ("train", "val", "test")
KNOWN_NORMAL_LABELS = {"pneumoniamnist": 0, "breastmnist": 1}
CLASS_NAMES = {
    "pneumoniamnist": {0: "normal", 1: "pneumonia"},
    "breastmnist": {0: "malignant", 1: "normal_or_benign"},
}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{flag}.npz"


@dataclass
class MedMNIST:
    """The validated arrays of one MedMNIST file (images still in their stored dtype)."""

    path: Path
    name: str
    normal_label: int
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    def normal_index(self, split: str) -> np.ndarray:
        """Positions of the normal images of ``split``."""
        return np.flatnonzero(self.labels[split] == self.normal_label)

    def imageset(
        self, split: str, *, image_size: int, channels: int, index: np.ndarray | None = None
    ) -> tuple[ImageSet, list[str]]:
        """Images of ``split`` (all, or those at ``index``) with the sha256 of each image's bytes."""
        labels = self.labels[split]
        if index is None:
            index = np.arange(len(labels))
        names = CLASS_NAMES.get(self.name, {})
        normal = labels[index] == self.normal_label
        images = ImageSet(
            images=arrays_to_tensor(self.images[split][index], image_size, channels),
            labels=torch.from_numpy(np.where(normal, NORMAL, ABNORMAL).astype(np.int64)),
            ids=[f"{self.path}#{split}/{i}" for i in index],
            defects=[
                "good" if n else names.get(int(k), f"label_{k}") for n, k in zip(normal, labels[index], strict=True)
            ],
        )
        return images, image_hashes(self.images[split][index])


def dataset_name(path: str | Path) -> str:
    """``pneumoniamnist`` for ``pneumoniamnist.npz`` and ``pneumoniamnist_128.npz``."""
    return re.sub(r"_\d+$", "", Path(path).stem.lower())


def load_medmnist(path: str | Path, normal_label: int | None = None) -> MedMNIST:
    """Read and check a MedMNIST ``.npz`` (NaN/Inf, dtype, shapes, labels)."""
    path = Path(path)
    arrays = _open_npz(path)
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise ImageReadError(path, f"not a MedMNIST file: missing {missing}; it holds {sorted(arrays)}")
    images = {s: _checked_images(path, arrays, f"{s}_images") for s in SPLITS}
    labels = {s: _checked_labels(path, arrays, s, len(images[s])) for s in SPLITS}
    name = dataset_name(path)
    present = sorted(set(np.concatenate(list(labels.values())).tolist()))
    if normal_label is None:
        if name not in KNOWN_NORMAL_LABELS:
            raise ValueError(
                f"{path}: the normal label of '{name}' is not known; set data.normal_label to one of {present}"
            )
        normal_label = KNOWN_NORMAL_LABELS[name]
    if normal_label not in labels["train"]:
        raise ValueError(f"{path}: no training image has normal_label={normal_label}; labels present: {present}")
    return MedMNIST(path=path, name=name, normal_label=normal_label, images=images, labels=labels)


def load_npz_images(path: str | Path, *, image_size: int, channels: int) -> tuple[ImageSet, list[str]]:
    """Unlabeled images of a ``.npz``: its ``images`` array, else ``train_images`` (labels -1)."""
    path = Path(path)
    arrays = _open_npz(path)
    key = "images" if "images" in arrays else "train_images"
    if key not in arrays:
        raise ImageReadError(path, f"no 'images' or 'train_images' array; it holds {sorted(arrays)}")
    raw = _checked_images(path, arrays, key)
    images = ImageSet(
        images=arrays_to_tensor(raw, image_size, channels),
        labels=torch.full((len(raw),), UNKNOWN, dtype=torch.long),
        ids=[f"{path}#{key.removesuffix('_images')}/{i}" for i in range(len(raw))],
    )
    return images, image_hashes(raw)


def arrays_to_tensor(raw: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """uint8 (or float in [0, 1]) ``[N, H, W(, 3)]`` -> float32 ``[N, C, S, S]``."""
    scale = 255.0 if raw.dtype == np.uint8 else 1.0
    if len(raw) == 0:
        return torch.zeros(0, channels, image_size, image_size)
    return to_tensor_batch([to_channels(image / scale, channels) for image in raw], image_size)


def image_hashes(raw: np.ndarray) -> list[str]:
    """sha256 of each image's array bytes."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in raw]


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ImageReadError(path, f"not a readable .npz file ({unreadable_arrays(exc)})") from None


def _checked_images(path: Path, arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    x = arrays[key]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise ImageReadError(path, f"{key} has shape {x.shape}; expected [N, H, W] or [N, H, W, 3]")
    if min(x.shape[1:3]) < MIN_SIDE:
        raise ImageReadError(path, f"{key} images are {x.shape[1]}x{x.shape[2]}, smaller than {MIN_SIDE} on a side")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ImageReadError(path, f"{key} has dtype {x.dtype}; expected uint8 or float in [0, 1]")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise ImageReadError(path, f"{key} has NaN/Inf values in {len(bad)} images (indices {bad[:5].tolist()}...)")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ImageReadError(path, f"{key} is float but not within [0, 1] (min {x.min():g}, max {x.max():g})")
    return x


def _checked_labels(path: Path, arrays: dict[str, np.ndarray], split: str, n: int) -> np.ndarray:
    y = arrays[f"{split}_labels"]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ImageReadError(
            path, f"{split}_labels has shape {y.shape}; expected ({n},) or ({n}, 1) (multi-label is not supported)"
        )
    if y.dtype.kind not in "iu":
        raise ImageReadError(path, f"{split}_labels has dtype {y.dtype}; expected integers")
    return y.astype(np.int64)


def download_medmnist(flag: str, dest: str | Path, *, url: str = MEDMNIST_URL, timeout: float = 10.0) -> Path:
    """Fetch ``{flag}.npz`` (e.g. ``pneumoniamnist``) into folder ``dest``; kept if already there.

    Raises ``RuntimeError`` when the host cannot be reached (then pass a local ``.npz`` path).
    """
    if not re.fullmatch(r"[a-z0-9_]+", flag):
        raise ValueError(f"not a MedMNIST flag: {flag!r} (e.g. pneumoniamnist, breastmnist_128)")
    target = Path(dest) / f"{flag}.npz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    address = url.format(flag=flag)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {address} ({exc}); this machine could not reach it - download {flag}.npz "
            f"elsewhere and pass the local .npz path as data.path"
        ) from exc
    partial.replace(target)
    log.info("downloaded %s to %s", address, target)
    return target
