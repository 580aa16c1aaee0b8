"""Decode one image file into float32 ``[C, H, W]`` arrays in ``[0, 1]``.

Supported: PNG/JPEG/BMP/TIFF (Pillow), DICOM (pydicom) and NIfTI (nibabel). Every image is brought
to the one requested channel layout, whatever its colour mode or bit depth, so that the storage
format of a file can never become a shortcut for the detector:

* channels=1: grey as is; colour -> luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2).
* channels=3: grey replicated three times; colour as RGB. Alpha is dropped, palettes are expanded.

Intensity scaling (documented choices):

* integers are divided by ``2**bits - 1`` where a TIFF declares unsigned ``BitsPerSample``
  (e.g. 12-bit data /4095), else unsigned ones by their dtype's maximum (8-bit /255, 16-bit /65535);
  signed 32-bit (Pillow mode ``I`` of unknown range) is min-max normalised per image;
* float images (mode ``F``) are kept when already within ``[0, 1]``, otherwise min-max normalised;
* DICOM: ``RescaleSlope``/``RescaleIntercept``, then the first ``WindowCenter``/``WindowWidth``
  (linear, ``clip((x - (c - w/2)) / w, 0, 1)``) when present, else min-max over all frames;
  ``MONOCHROME1`` is inverted; each frame of a multi-frame file is its own image (``path#frame=3``);
* NIfTI: axial slices along the last spatial axis (4-D files: first volume), each scaled by the
  **volume's** 0.5 / 99.5 percentiles and clipped; a slice is shown as ``np.rot90(volume[:, :, z])``
  (what ``imshow(slice.T, origin="lower")`` shows); ids are ``path#z=12``.

Min-max of a constant image gives zeros. NaN/Inf values, images smaller than ``MIN_SIDE`` pixels
on a side, images larger than ``MAX_SIDE`` a side or ``MAX_PIXELS`` in all (16,384 and 2**28,
about 268 Mpx) and corrupt or truncated files raise :class:`ImageReadError` naming the file. The
size is checked from the file's header, before the pixels are decoded. Pillow's own
decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 Mpx by default) is set to
``MAX_PIXELS`` while medad decodes a file and put back afterwards, so medad's limit is the one
that applies, and other code using Pillow keeps its own.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> path = tempfile.mkdtemp() + "/a.png"
>>> Image.fromarray(np.full((8, 10), 255, np.uint8)).save(path)
>>> [(i.endswith("a.png"), a.shape, float(a.max())) for i, a in read_images(path, channels=3)]
[(True, (3, 8, 10), 1.0)]
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, ImageFile, UnidentifiedImageError

log = logging.getLogger("medad.data")

MIN_SIDE = 8
"""Smallest accepted height/width in pixels (1x1 placeholders and icons are rejected)."""
MAX_SIDE = 16384
"""Largest accepted height/width in pixels."""
MAX_PIXELS = 2**28
"""Largest accepted number of pixels of one image (or NIfTI slice)."""

PIL_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
NIFTI_EXTENSIONS = frozenset({".nii", ".nii.gz"})
IMAGE_EXTENSIONS = PIL_EXTENSIONS | DICOM_EXTENSIONS | NIFTI_EXTENSIONS
"""File name endings read as images (case-insensitive); extension-less files with a DICOM preamble too."""

LUMINANCE = np.array([0.299, 0.587, 0.114])
"""Grey from RGB, ITU-R BT.601 as in PIL's "L" conversion: the one set of weights (files, tensors, augmentations)."""

NiftiSlices = str | int


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"cannot read {path}: {problem}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (worker processes)
        return type(self), (self.path, self.problem)


def suffix_of(path: str | Path) -> str:
    """Lower-case file ending, with ``.nii.gz`` as one ending."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | Path) -> str:
    """File name without its ending (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))]


def has_dicom_preamble(path: Path) -> bool:
    """True if ``path`` is a regular file carrying the ``DICM`` marker after its 128-byte preamble
    (a named pipe or device is never opened: reading one could block)."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_image_file(path: Path) -> bool:
    """Whether ``path`` looks like an image medad reads (by ending, or DICOM preamble if none)."""
    suffix = suffix_of(path)
    return suffix in IMAGE_EXTENSIONS or (suffix == "" and has_dicom_preamble(path))


DICOM_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (``.dcm`` / ``.dicom`` or an extension-less DICOM file)."""
    suffix = suffix_of(path)
    return suffix in (".dcm", ".dicom") or (suffix == "" and has_dicom_preamble(path))


def dicom_identifiers(path: Path) -> dict[str, str]:
    """The :data:`DICOM_IDENTIFIERS` of a DICOM file (header only; "" where absent).

    >>> dicom_identifiers(Path("missing.dcm"))["PatientID"]
    ''
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return dict.fromkeys(DICOM_IDENTIFIERS, "")
    return {key: str(getattr(ds, key, "")) for key in DICOM_IDENTIFIERS}


def list_image_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files inside ``folder``, sorted by path.

    Hidden files and folders and files with other endings (``.txt``, ``.csv``, ``Thumbs.db``...)
    are skipped with one info log line each. Sub-folders are skipped (logged) unless ``recursive``:
    then every level is searched (e.g. a DICOM export ``study/series/*.dcm``), following links, but
    no folder twice: a link to a folder already searched (a link to itself or a parent, a loop, a
    second link to one folder) is skipped with a warning. A missing folder, one that cannot be
    listed or one without images raises ``ValueError``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "b.png").write_bytes(b""), (d / "notes.txt").write_text("")
    >>> (d / "s").mkdir(); _ = (d / "s" / "c.png").write_bytes(b""); (d / "s" / "loop").symlink_to(d)
    >>> [p.name for p in list_image_files(d)], [str(p.relative_to(d)) for p in list_image_files(d, recursive=True)]
    (['b.png'], ['b.png', 's/c.png'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder not found: {folder}" if not folder.exists() else f"not a folder: {folder}")
    files = _list_folder(folder, recursive, {folder.resolve(): folder})
    if not files:
        raise ValueError(
            f"no images found in {folder}{' or its sub-folders' if recursive else ''} (looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} and extension-less DICOM files)"
        )
    return files


def _list_folder(folder: Path, recursive: bool, searched: dict[Path, Path]) -> list[Path]:
    """The image files of :func:`list_image_files` in ``folder`` (``searched``: the resolved
    folders listed so far, each with the path it was first reached by); may be empty."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ValueError(f"cannot list the folder {folder}: {exc.strerror or exc}") from None
    files = []
    for path in entries:
        if path.name.startswith("."):
            log.info("skipping hidden %s %s", "folder" if path.is_dir() else "file", path)
        elif path.is_dir():
            target = path.resolve()
            if not recursive:
                log.info("skipping the folder %s (sub-folders are not searched here)", path)
            elif target in searched:
                log.warning("skipping %s: it is the folder %s, searched already (a link)", path, searched[target])
            else:
                searched[target] = path
                files.extend(_list_folder(path, True, searched))
        elif is_image_file(path):
            files.append(path)
        else:
            log.info("skipping %s (not an image file ending)", path)
    return files


def read_images(
    path: str | Path, channels: int, nifti_slices: NiftiSlices = "middle"
) -> list[tuple[str, np.ndarray]]:
    """Decode ``path`` into ``(id, float32 [channels, H, W])`` pairs, one per image it holds.

    A plain image or single-frame DICOM gives one pair with ``id = str(path)``; multi-frame DICOM
    gives one per frame, NIfTI one per selected slice (``nifti_slices``: ``"middle"``, ``"all"``
    or a slice index).
    """
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a file")
    suffix = suffix_of(path)
    try:
        if suffix in NIFTI_EXTENSIONS:
            items = _read_nifti(path, nifti_slices)
        elif suffix in DICOM_EXTENSIONS or has_dicom_preamble(path):
            items = _read_dicom(path)
        else:
            items = [(str(path), _read_pillow(path))]
    except ImageReadError:
        raise
    except Exception as exc:  # last resort: a library failure still names the file
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    return [(image_id, to_channels(pixels, channels)) for image_id, pixels in items]


def read_mask(path: str | Path) -> np.ndarray:
    """A lesion mask as uint8 ``[H, W]``, 1 = lesion.

    A colour mask counts each pixel by its brightest channel. A mask holding 0 and at most one
    other value (0/1, 0/255, 0/65535, a palette with one colour) is lesion wherever it is not 0.
    Any other mask, such as a JPEG-saved or resampled one (lesion 255 over a background of 1-3, or
    grey edges), is lesion where it is above half its range: >= 128 in 8 bits, >= 32768 in 16
    bits, > 0.5 for floats in [0, 1]; a warning names the file.

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/m.png"
    >>> Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(path)
    >>> int(read_mask(path).sum())
    8
    """
    items = read_images(path, channels=3)
    if len(items) != 1:
        raise ImageReadError(path, f"a mask must hold one image, this file holds {len(items)}")
    values = items[0][1].max(axis=0)
    levels = np.unique(values)
    if levels[0] == 0 and len(levels) <= 2:
        return (values > 0).astype(np.uint8)
    log.warning("mask %s is not a 0 / non-zero mask (%d distinct values, %.1f%% to %.1f%% of its range): lesion is "
                "taken where it is above half its range", path, len(levels), 100 * levels[0], 100 * levels[-1])
    return (values > 0.5).astype(np.uint8)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Grey ``[H, W]`` or RGB ``[H, W, 3]`` in [0, 1] -> float32 ``[channels, H, W]`` in [0, 1]."""
    if pixels.ndim == 2:
        out = np.repeat(pixels[None], channels, axis=0)
    elif channels == 1:
        out = (pixels @ LUMINANCE)[None]
    else:
        out = np.moveaxis(pixels, -1, 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the array's min and max; a constant array gives zeros."""
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x, dtype=np.float64)


def _check_size(path: Path, height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(path, f"image is {height}x{width} pixels, smaller than {MIN_SIDE} on a side")
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ImageReadError(
            path, f"image is {height}x{width} pixels, larger than the limit ({MAX_SIDE} a side, {MAX_PIXELS} pixels)"
        )


def _check_finite(path: Path, x: np.ndarray) -> None:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ImageReadError(path, f"image contains {int((~np.isfinite(x)).sum())} NaN/Inf values")


# --- Pillow ------------------------------------------------------------------------------------

_PILLOW_LOCK = threading.Lock()


@contextmanager
def _pillow_rules() -> Iterator[None]:
    """Decode with Pillow's global switches set to medad's rules, whatever another library set them
    to, and put them back afterwards: truncated data is an error (``LOAD_TRUNCATED_IMAGES`` off) and
    the decompression-bomb guard is ``MAX_PIXELS`` (its warning, which Pillow gives above the guard,
    an error)."""
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        before = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, MAX_PIXELS
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = before


def open_pillow(path: Path) -> Image.Image:
    """``Image.open`` under medad's rules (header only; no pixel is decoded yet): an
    :class:`ImageReadError` for a file Pillow cannot identify or one larger than the limits."""
    with _pillow_rules():
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            raise ImageReadError(path, "not an image file, or a format Pillow cannot read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(path, f"image is larger than the limit ({MAX_SIDE} a side, {MAX_PIXELS} pixels): "
                                       f"{exc}") from None
    try:
        _check_size(path, image.height, image.width)
    except ImageReadError:
        image.close()
        raise
    return image


def _read_pillow(path: Path) -> np.ndarray:
    with open_pillow(path) as image:
        bits = _declared_unsigned_bits(image)
        try:
            with _pillow_rules():
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageReadError(path, f"corrupt or truncated image data ({exc})") from None
        return _scale(path, _pillow_pixels(image), bits)


def _declared_unsigned_bits(image: Image.Image) -> int | None:
    """Bit depth a TIFF declares for unsigned integer samples (None when unknown or signed)."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or tags.get(339, (1,))[0] != 1:  # SampleFormat 1 = unsigned integer
        return None
    bits = tags.get(258)
    return int(bits[0]) if bits else None


def _pillow_pixels(image: Image.Image) -> np.ndarray:
    """Grey ``[H, W]`` (any dtype) or RGB ``[H, W, 3]`` uint8 pixels of a loaded image."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    if mode in ("P", "PA"):  # via RGBA so that palette transparency causes no warning
        return np.asarray(image.convert("RGBA"))[..., :3]
    if mode == "L" or mode.startswith(("I", "F")):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))  # RGB, RGBA (alpha dropped), CMYK, YCbCr, ...


def _scale(path: Path, pixels: np.ndarray, bits: int | None) -> np.ndarray:
    """Integer or float pixels -> float64 in [0, 1] (see the module docstring for the rules)."""
    x = pixels.astype(np.float64)
    if bits and pixels.dtype.kind in "ui" and 8 < bits <= 8 * pixels.dtype.itemsize:  # not Pillow-converted
        return np.clip(x / (2**bits - 1), 0.0, 1.0)
    if pixels.dtype.kind == "u":
        return x / np.iinfo(pixels.dtype).max
    _check_finite(path, x)
    if pixels.dtype.kind == "f" and x.min() >= 0.0 and x.max() <= 1.0:
        return x
    return minmax(x)


# --- DICOM -------------------------------------------------------------------------------------


def _first_value(value) -> float:
    return float(np.ravel(np.asarray(value, dtype=np.float64))[0])


def _read_dicom(path: Path) -> list[tuple[str, np.ndarray]]:
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data")
    _check_size(path, int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode the DICOM pixel data ({exc})") from None
    colour = int(ds.get("SamplesPerPixel", 1)) == 3
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    x = pixels.astype(np.float64)
    if frames == 1:
        x = x[None]
    _check_finite(path, x)
    if colour:
        x = np.clip(x / (2 ** int(ds.get("BitsStored", 8)) - 1), 0.0, 1.0)
    else:
        x = x * _first_value(ds.get("RescaleSlope", 1.0)) + _first_value(ds.get("RescaleIntercept", 0.0))
        _check_finite(path, x)
        x = _window(x, ds)
        if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
            x = 1.0 - x
    if frames == 1:
        return [(str(path), x[0])]
    return [(f"{path}#frame={i}", frame) for i, frame in enumerate(x)]


def _window(x: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Linear VOI window from the first WindowCenter/WindowWidth, else min-max."""
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
        if width > 0:
            return np.clip((x - (centre - width / 2)) / width, 0.0, 1.0)
        log.debug("ignoring window width %s (not > 0)", width)
    return minmax(x)


# --- NIfTI -------------------------------------------------------------------------------------


def _read_nifti(path: Path, slices: NiftiSlices) -> list[tuple[str, np.ndarray]]:
    try:
        volume_file = nib.load(path)
        shape = volume_file.shape
    except Exception as exc:
        raise ImageReadError(path, f"not a readable NIfTI file ({exc})") from None
    if not 2 <= len(shape) <= 4:
        raise ImageReadError(path, f"expected a 2-D, 3-D or 4-D NIfTI image, got shape {shape}")
    _check_size(path, shape[1], shape[0])
    index = (slice(None),) * min(len(shape), 3) + (0,) * max(0, len(shape) - 3)
    volume = np.asarray(volume_file.dataobj[index], dtype=np.float64)
    if volume.ndim == 2:
        volume = volume[..., None]
    _check_finite(path, volume)
    lo, hi = np.percentile(volume, [0.5, 99.5])
    if hi > lo:
        volume = np.clip((volume - lo) / (hi - lo), 0.0, 1.0)
    else:  # e.g. a mostly empty volume: fall back to min-max
        volume = minmax(volume)
    depth = volume.shape[2]
    if slices == "middle":
        chosen = [depth // 2]
    elif slices == "all":
        chosen = list(range(depth))
    elif isinstance(slices, int) and 0 <= slices < depth:
        chosen = [slices]
    else:
        raise ImageReadError(path, f"nifti_slices={slices!r} is not 'middle', 'all' or an index in 0..{depth - 1}")
    return [(f"{path}#z={z}", np.rot90(volume[:, :, z])) for z in chosen]
