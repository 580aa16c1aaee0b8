"""Image folders on disk: the MVTec layout, labelled folders and plain folders.

MVTec layout (what anomalib and MedIAnomaly use)::

    root/train/good/*             normal training images (required)
    root/test/good/*              normal test images       } test/ is optional:
    root/test/<defect>/*          abnormal test images     } without it, train/predict only
    root/ground_truth/<defect>/<stem>_mask.png  (or <stem>.png)  optional pixel masks

A mask may have any image ending medad reads (``.png`` is looked for first, ``<stem>_mask``
before ``<stem>``); :func:`medad.data.readers.read_mask` says how its values become lesion pixels.
Abnormal images without a mask are allowed: they are scored and left out of the pixel metrics.
When ``ground_truth/`` exists, warnings name the mask files that match no abnormal test image
(``0000-mask.png`` beside ``0000.png``, a ``Tumor/`` folder for ``test/tumor/``) and the abnormal
images left without a mask (the first :data:`NAMED` of each, and how many more). Masks of
normal images (``ground_truth/good/``) are not read: a normal image's mask is empty. A plain
folder (no layout) is read as unlabeled images (label -1), e.g. for ``predict`` or an unlabeled
pool.

>>> import tempfile, pathlib, numpy as np
>>> from PIL import Image
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for part in ("train/good", "test/good", "test/cyst"):
...     (root / part).mkdir(parents=True)
...     Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / part / "x.png")
>>> layout = scan_folder(root)
>>> len(layout.train), [(t.label, t.defect, t.mask) for t in layout.test]
(1, [(0, 'good', None), (1, 'cyst', None)])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medad.data.imageset import ABNORMAL, NORMAL, UNKNOWN, ImageSet
from medad.data.preprocess import check_mask_shape, resize_masks, to_tensor_batch
from medad.data.readers import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    NiftiSlices,
    is_image_file,
    list_image_files,
    read_images,
    read_mask,
    stem_of,
)
from medad.files import sha256_file

log = logging.getLogger("medad.data")

GROUND_TRUTH = "ground_truth"
MASK_ENDINGS = (".png", *sorted(IMAGE_EXTENSIONS - {".png"}))
"""The endings a mask file is looked up with, in order."""
NAMED = 5
"""Files named in a warning about many; the rest are counted."""


@dataclass(frozen=True)
class FileItem:
    """One image file with what is known about it."""

    path: Path
    label: int = UNKNOWN
    defect: str = ""
    mask: Path | None = None


@dataclass
class FolderLayout:
    """The files of an MVTec-style folder; ``test`` is empty when there is no ``test/`` folder."""

    root: Path
    train: list[Path]
    test: list[FileItem]


@dataclass
class Loaded:
    """Decoded images, the sha256 of each image's source, and the files skipped as unreadable."""

    images: ImageSet
    sha256: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_folder(root: str | Path) -> FolderLayout:
    """Find the train and test files of an MVTec-style folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if not (root / "train" / "good").is_dir():
        raise ValueError(
            f"{root} has no train/good folder; expected the layout train/good/*, test/good/*, "
            "test/<defect>/*, ground_truth/<defect>/<stem>_mask.png"
        )
    train = list_image_files(root / "train" / "good")
    test_dir = root / "test"
    test = scan_labelled(test_dir, root / GROUND_TRUTH) if test_dir.is_dir() else []
    return FolderLayout(root=root, train=train, test=test)


def scan_labelled(folder: str | Path, ground_truth: str | Path) -> list[FileItem]:
    """Files of a folder laid out like ``test/``: ``good/`` (label 0) and ``<defect>/`` (label 1).

    Masks are looked up as ``ground_truth/<defect>/<stem>_mask.png`` or ``<stem>.png`` (other image
    endings too, see the module docstring, which also says what is warned about); a sub-folder
    named ``ground_truth`` inside ``folder`` is not a defect.
    """
    folder, ground_truth = Path(folder), Path(ground_truth)
    loose = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)]
    if loose:
        raise ValueError(f"{folder} holds images directly ({loose[0]}, ...); put them in good/ or <defect>/ folders")
    items = []
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != GROUND_TRUTH]
    for sub in sorted(subfolders, key=lambda p: (p.name != "good", p.name)):  # good first
        normal = sub.name == "good"
        masks = {} if normal else _files_in(ground_truth / sub.name)
        for path in list_image_files(sub):
            mask = None if normal else _find_mask(masks, path)
            items.append(FileItem(path, NORMAL if normal else ABNORMAL, sub.name, mask))
    if ground_truth.is_dir():
        _warn_about_unmatched_masks(items, ground_truth)
    return items


def _files_in(folder: Path) -> dict[str, Path]:
    """The files directly inside ``folder`` by name (none when it does not exist)."""
    return {p.name: p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def _find_mask(masks: dict[str, Path], image: Path) -> Path | None:
    stem = stem_of(image)
    names = (f"{stem}{tail}{ending}" for ending in MASK_ENDINGS for tail in ("_mask", ""))
    return next((masks[name] for name in names if name in masks), None)


def _warn_about_unmatched_masks(items: Sequence[FileItem], ground_truth: Path) -> None:
    """Warn about the mask files under ``ground_truth`` that no abnormal image uses, and about the
    abnormal images that have no mask."""
    try:
        files = list_image_files(ground_truth, recursive=True)
    except ValueError:  # no image file in it
        files = []
    used = {item.mask for item in items}
    normal = ground_truth / "good"
    unused = [f for f in files if f not in used and not f.is_relative_to(normal)]
    if any(f.is_relative_to(normal) for f in files):
        log.info("not reading the masks in %s: a normal image's mask is empty", normal)
    if unused:
        log.warning("%d mask files under %s match no abnormal test image and are not used (the mask of "
                    "<defect>/<stem>.png is %s/<defect>/<stem>_mask.png or <stem>.png): %s", len(unused),
                    ground_truth, GROUND_TRUTH, _some(unused, ground_truth))
    missing = [item.path for item in items if item.label == ABNORMAL and item.mask is None]
    if missing:
        log.warning("%d abnormal images have no mask in %s; they are scored but left out of the pixel metrics: %s",
                    len(missing), ground_truth, _some(missing, ground_truth.parent))


def _some(paths: Sequence[Path], root: Path) -> str:
    """The first :data:`NAMED` of ``paths`` (relative to ``root``), and how many more."""
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths[:NAMED]]
    more = f" and {len(paths) - NAMED} more" if len(paths) > NAMED else ""
    return ", ".join(names) + more


def load_files(
    items: Sequence[FileItem],
    *,
    image_size: int,
    channels: int,
    nifti_slices: NiftiSlices = "middle",
    on_error: str = "raise",
) -> Loaded:
    """Decode, check and resize ``items`` (masks too, when any item has one).

    ``on_error="skip"`` logs a warning per unreadable file (or unusable mask) and lists it in
    ``Loaded.skipped`` instead of raising :class:`ImageReadError`. ``has_mask`` is True for images
    with a mask file and for normal images (their mask is known to be empty).
    """
    with_masks = any(item.mask is not None for item in items)
    images, masks, ids, labels, defects, has_mask, hashes = [], [], [], [], [], [], []
    skipped: list[tuple[str, str]] = []
    for item in items:
        try:
            decoded = read_images(item.path, channels, nifti_slices)
            mask = _read_item_mask(item, decoded)
            digest = _sha256(item.path)
        except ImageReadError as exc:
            if on_error == "raise":
                raise
            log.warning("skipping: %s", exc)
            skipped.append((str(item.path), str(exc)))
            continue
        images.append(to_tensor_batch([pixels for _, pixels in decoded], image_size))
        for image_id, pixels in decoded:
            if with_masks:
                masks.append(mask if mask is not None else np.zeros(pixels.shape[1:], np.uint8))
            ids.append(image_id)
            labels.append(item.label)
            defects.append(item.defect)
            has_mask.append(mask is not None or item.label == NORMAL)
            hashes.append(digest)
    if not images:
        images = [torch.zeros(0, channels, image_size, image_size)]
    return Loaded(
        images=ImageSet(
            images=torch.cat(images),
            labels=torch.tensor(labels, dtype=torch.long),
            ids=ids,
            masks=resize_masks(masks, image_size) if with_masks else None,
            has_mask=torch.tensor(has_mask, dtype=torch.bool) if with_masks else None,
            defects=defects,
        ),
        sha256=hashes,
        skipped=skipped,
    )


def _sha256(path: Path) -> str:
    """:func:`sha256_file`; a file gone or unreadable since it was decoded is an :class:`ImageReadError`."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read again to hash it ({exc.strerror or exc})") from None


def _read_item_mask(item: FileItem, decoded: list[tuple[str, np.ndarray]]) -> np.ndarray | None:
    if item.mask is None:
        return None
    mask = read_mask(item.mask)
    if len(decoded) != 1:
        raise ImageReadError(item.path, f"has a mask ({item.mask}) but holds {len(decoded)} images")
    check_mask_shape(str(item.path), decoded[0][1].shape, str(item.mask), mask.shape)
    return mask


def load_plain_folder(
    folder: str | Path,
    *,
    image_size: int,
    channels: int,
    nifti_slices: NiftiSlices = "middle",
    on_error: str = "raise",
) -> Loaded:
    """All images directly inside ``folder`` (not recursive), unlabeled (label -1)."""
    return load_files(
        [FileItem(path) for path in list_image_files(folder)],
        image_size=image_size,
        channels=channels,
        nifti_slices=nifti_slices,
        on_error=on_error,
    )
