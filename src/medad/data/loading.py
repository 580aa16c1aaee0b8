"""Entry points the pipeline calls: the dataset splits of a run, and images to predict on.

Splits (``load_splits``):

* ``train`` - training normals (``train/good``, or the normals of a MedMNIST ``train`` split),
  deterministically subsampled to ``max_train`` first when set.
* ``val`` - validation normals for thresholds and model selection, never taken from the test set.
  Folders: ``val_fraction`` of the training normal **files** (at least 1 when ``val_fraction > 0``
  and there are >= 2 files; slices of one volume stay together), drawn with ``seed``. MedMNIST: the
  normals of its own ``val`` split when ``val_fraction > 0`` (none when 0).
* ``test`` - ``test/`` (good + defect folders, masks from ``ground_truth/``) or the MedMNIST test
  split; ``None`` when the folder has no ``test/``.
* ``unlabeled`` - ``data.unlabeled``: a plain image folder, or a ``.npz`` (its ``images``, else
  ``train_images``); labels -1.
* ``labelled_val`` - ``data.labelled_val``: a folder laid out like ``test/`` (``good/`` + defect
  folders), or a MedMNIST ``.npz`` whose ``val`` split is then used **with** its labels. Only for the
  separately reported labelled-validation threshold.

Unreadable files: ``on_error="raise"`` stops with :class:`ImageReadError`; ``"skip"`` logs a warning,
leaves the file out (and out of the manifest) and lists it in ``DatasetSplits.skipped``.

>>> import tempfile
>>> from medad.config import DataConfig
>>> from medad.data.synthetic import write_phantom_dataset
>>> root = write_phantom_dataset(tempfile.mkdtemp() + "/ph", 10, 2, 2, size=16)
>>> splits = load_splits(DataConfig(path=str(root), image_size=16, val_fraction=0.2), seed=0)
>>> len(splits.train), len(splits.val), len(splits.test), splits.test.has_mask.tolist()
(8, 2, 4, [True, True, True, True])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medad.config import DataConfig
from medad.data.folder import FileItem, Loaded, load_plain_folder, scan_folder, scan_labelled
from medad.data.imageset import ABNORMAL, NORMAL, ImageSet
from medad.data.manifest import Manifest
from medad.data.medmnist import load_medmnist, load_npz_images
from medad.data.preprocessor import Preprocessor

log = logging.getLogger("medad.data")


@dataclass
class DatasetSplits:
    """Everything a run reads, its manifest, and the ``(file, reason)`` of each skipped file."""

    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    unlabeled: ImageSet | None
    labelled_val: ImageSet | None
    manifest: Manifest
    skipped: list[tuple[str, str]] = field(default_factory=list)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """``folder`` or ``medmnist`` for ``path`` (checked against an explicit ``fmt``)."""
    if not path.exists():
        raise ValueError(f"data path not found: {path}")
    found = "folder" if path.is_dir() else "medmnist" if path.suffix.lower() == ".npz" else None
    if found is None:
        raise ValueError(f"{path} is neither a folder (MVTec layout) nor a MedMNIST .npz file")
    if fmt not in ("auto", found):
        raise ValueError(f"data.format is {fmt!r} but {path} is a {'folder' if found == 'folder' else '.npz file'}")
    return found


def load_splits(cfg: DataConfig, seed: int) -> DatasetSplits:
    """Load every split a run needs (see the module docstring), with its manifest."""
    if cfg.path is None:
        raise ValueError("data.path is not set: give an MVTec-style folder or a MedMNIST .npz file")
    path = Path(cfg.path).expanduser()
    manifest = Manifest()
    skipped: list[tuple[str, str]] = []

    def keep(loaded: Loaded, role: str, root: Path) -> ImageSet:
        manifest.add(loaded.images, loaded.sha256, role, root)
        skipped.extend(loaded.skipped)
        return loaded.images

    if detect_format(path, cfg.format) == "folder":
        train_files, val_files, test_items = _folder_files(path, cfg, seed)
        train = keep(_load(train_files, cfg), "train", path)
        val = keep(_load(val_files, cfg), "val", path)
        test = keep(_load(test_items, cfg), "test", path) if test_items else None
    else:
        data = load_medmnist(path, cfg.normal_label)
        normals = data.normal_index("train")
        if cfg.max_train is not None and cfg.max_train < len(normals):
            normals = np.sort(np.random.default_rng(seed).permutation(normals)[: cfg.max_train])
        size = {"image_size": cfg.image_size, "channels": cfg.channels}
        train = keep(Loaded(*data.imageset("train", index=normals, **size)), "train", path.parent)
        val_index = data.normal_index("val") if cfg.val_fraction > 0 else np.array([], dtype=np.int64)
        val = keep(Loaded(*data.imageset("val", index=val_index, **size)), "val", path.parent)
        test = keep(Loaded(*data.imageset("test", **size)), "test", path.parent)
    if len(train) == 0:
        raise ValueError(f"no readable training images in {path}")
    if test is not None and len(test) == 0:
        log.warning("no readable test images in %s; continuing without a test set", path)
        test = None

    unlabeled = keep(*_unlabeled(cfg)) if cfg.unlabeled else None
    labelled_val = keep(*_labelled_val(cfg)) if cfg.labelled_val else None
    _warn_on_shared_images(manifest)
    log.info(
        "data %s: %d train, %d val, %s test, %s unlabeled, %s labelled-val images (%d skipped)",
        path, len(train), len(val), _count(test), _count(unlabeled), _count(labelled_val), len(skipped),
    )
    return DatasetSplits(train, val, test, unlabeled, labelled_val, manifest, skipped)


def load_test_split(cfg: DataConfig) -> ImageSet:
    """Only the labelled test split, for scoring with a trained model (``medad evaluate``).

    A folder needs ``test/`` (``train/good`` is not read); a MedMNIST file gives its test split.
    """
    if cfg.path is None:
        raise ValueError("data.path is not set")
    path = Path(cfg.path).expanduser()
    if detect_format(path, cfg.format) == "medmnist":
        data = load_medmnist(path, cfg.normal_label)
        return data.imageset("test", image_size=cfg.image_size, channels=cfg.channels)[0]
    if not (path / "test").is_dir():
        raise ValueError(f"{path} has no test/ folder (expected test/good and test/<defect>)")
    images = _load(scan_labelled(path / "test", path / "ground_truth"), cfg).images
    if len(images) == 0:
        raise ValueError(f"no readable test images in {path / 'test'}")
    return images


def _folder_files(root: Path, cfg: DataConfig, seed: int) -> tuple[list[FileItem], list[FileItem], list[FileItem]]:
    """Training/validation normal files (seeded split of ``train/good``) and the test files."""
    layout = scan_folder(root)
    order = np.random.default_rng(seed).permutation(len(layout.train))
    if cfg.max_train is not None:
        order = order[: cfg.max_train]
    n_val = 0
    if cfg.val_fraction > 0 and len(order) >= 2:
        n_val = min(len(order) - 1, max(1, round(cfg.val_fraction * len(order))))

    def items(index: np.ndarray) -> list[FileItem]:
        return [FileItem(layout.train[i], NORMAL, "good") for i in sorted(index)]

    return items(order[n_val:]), items(order[:n_val]), layout.test


def _load(items: list[FileItem], cfg: DataConfig) -> Loaded:
    return Preprocessor.from_config(cfg).read_files(items, cfg.on_error)


def _unlabeled(cfg: DataConfig) -> tuple[Loaded, str, Path]:
    path = Path(cfg.unlabeled).expanduser()
    if path.suffix.lower() == ".npz":
        images = load_npz_images(path, image_size=cfg.image_size, channels=cfg.channels)
        return Loaded(*images), "unlabeled", path.parent
    loaded = load_plain_folder(
        path, image_size=cfg.image_size, channels=cfg.channels, nifti_slices=cfg.nifti_slices, on_error=cfg.on_error
    )
    return loaded, "unlabeled", path


def _labelled_val(cfg: DataConfig) -> tuple[Loaded, str, Path]:
    path = Path(cfg.labelled_val).expanduser()
    if path.suffix.lower() == ".npz":
        data = load_medmnist(path, cfg.normal_label)
        loaded, root = Loaded(*data.imageset("val", image_size=cfg.image_size, channels=cfg.channels)), path.parent
    elif path.is_dir():
        loaded, root = _load(scan_labelled(path, path / "ground_truth"), cfg), path
    else:
        raise ValueError(f"data.labelled_val must be a folder (good/ + defect folders) or a MedMNIST .npz: {path}")
    labels = set(loaded.images.labels.tolist())
    if not {NORMAL, ABNORMAL} <= labels:
        raise ValueError(f"labelled validation data {path} needs both normal and abnormal images")
    return loaded, "labelled-val", root


def _warn_on_shared_images(manifest: Manifest) -> None:
    """Warn when a test image is byte-identical to an image used for training or validation, and
    when a validation normal is byte-identical to a training normal (one image under two names)."""
    seen = {r.sha256 for r in manifest.rows if r.role in ("train", "val", "unlabeled")}
    shared = [r.id for r in manifest.rows if r.role.startswith("test") and r.sha256 in seen]
    if shared:
        log.warning(
            "%d test images are byte-identical to training/validation/unlabeled images (e.g. %s)",
            len(shared),
            shared[0],
        )
    train = {r.sha256 for r in manifest.rows if r.role == "train"}
    twins = [r.id for r in manifest.rows if r.role == "val" and r.sha256 in train]
    if twins:
        log.warning(
            "%d validation normals are byte-identical to training normals (e.g. %s): scores that remember the "
            "training images (nnd, patchcore) rate them as perfectly normal, so the threshold set on them is too low",
            len(twins),
            twins[0],
        )


def _count(images: ImageSet | None) -> str:
    return "no" if images is None else str(len(images))
