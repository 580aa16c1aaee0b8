"""Decoding single files: every Pillow mode, DICOM, NIfTI, and the errors."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medad.data import readers
from medad.data.readers import (
    MAX_SIDE,
    ImageReadError,
    list_image_files,
    open_pillow,
    read_images,
    read_mask,
)

GREY = (np.arange(16 * 12).reshape(16, 12) % 256).astype(np.uint8)
RGB = np.stack([GREY, 255 - GREY, GREY // 2], axis=-1)


def read_one(path, channels=1):
    (image_id, pixels), = read_images(path, channels)
    assert image_id == str(path) and pixels.dtype == np.float32
    return pixels


def write_dicom(path, pixels, photometric="MONOCHROME2", bits=12, **attributes):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(pixels, photometric, bits)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- Pillow ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_grey_content_reads_the_same_in_every_mode(tmp_path, mode):
    """Storage mode and bit depth must not change the values (no format shortcut)."""
    image = Image.fromarray(GREY.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(GREY).convert(mode)
    image.save(tmp_path / "x.png")
    expected = GREY / 255
    np.testing.assert_allclose(read_one(tmp_path / "x.png", 1)[0], expected, atol=1e-6)
    np.testing.assert_allclose(read_one(tmp_path / "x.png", 3), np.stack([expected] * 3), atol=1e-6)


def test_unsigned_tiff_uses_its_declared_bit_depth(tmp_path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "u16.tif")
    np.testing.assert_allclose(read_one(tmp_path / "u16.tif")[0], GREY / 255, atol=1e-6)
    Image.fromarray(GREY.astype(np.int32) * 1000).save(tmp_path / "u32.tif")
    data = (tmp_path / "u32.tif").read_bytes()
    sample_format_signed = b"\x53\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # tag 339, SHORT, 1 value: 2
    assert data.count(sample_format_signed) == 1
    (tmp_path / "u32.tif").write_bytes(data.replace(sample_format_signed, sample_format_signed[:-2] + b"\x01\x00"))
    np.testing.assert_allclose(read_one(tmp_path / "u32.tif")[0], GREY.astype(np.int64) * 1000 / (2**32 - 1), atol=1e-9)


def test_sixteen_bit_is_scaled_by_65535(tmp_path):
    pixels = np.array([[0, 65535, 32768, 1]] * 8, dtype=np.uint16).repeat(2, axis=1)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    out = read_one(tmp_path / "x.png")[0]
    assert out[0, 0] == 0.0 and out[0, 2] == 1.0
    assert out[0, 4] == pytest.approx(32768 / 65535)


def test_rgb_to_luminance_and_to_three_channels(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "x.png")
    np.testing.assert_allclose(read_one(tmp_path / "x.png", 3), np.moveaxis(RGB, -1, 0) / 255, atol=1e-6)
    luminance = (0.299 * RGB[..., 0] + 0.587 * RGB[..., 1] + 0.114 * RGB[..., 2]) / 255
    np.testing.assert_allclose(read_one(tmp_path / "x.png", 1)[0], luminance, atol=1e-6)


def test_rgba_alpha_is_dropped(tmp_path):
    rgba = np.concatenate([RGB, np.zeros_like(RGB[..., :1])], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(RGB).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_one(tmp_path / "a.png", 3), read_one(tmp_path / "b.png", 3))


def test_palette_image_equals_its_rgb_conversion(tmp_path):
    palette = Image.fromarray(RGB).quantize(colors=7)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "P"
        expected = np.asarray(image.convert("RGBA"))[..., :3] / 255
    np.testing.assert_allclose(read_one(tmp_path / "p.png", 3), np.moveaxis(expected, -1, 0), atol=1e-6)


def test_one_bit_image(tmp_path):
    Image.fromarray(GREY > 100).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_one(tmp_path / "b.png")[0], (GREY > 100).astype(np.float32))


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tiff"])
def test_other_pillow_formats(tmp_path, suffix):
    Image.fromarray(RGB).save(tmp_path / f"x{suffix}")
    out = read_one(tmp_path / f"x{suffix}", 3)
    assert out.shape == (3, 16, 12)
    np.testing.assert_allclose(out, np.moveaxis(RGB, -1, 0) / 255, atol=0.1 if suffix == ".jpg" else 1e-6)


def test_float_tiff_kept_in_unit_range_else_min_max(tmp_path):
    unit = np.linspace(0.2, 0.7, 16 * 12, dtype=np.float32).reshape(16, 12)
    Image.fromarray(unit).save(tmp_path / "u.tif")
    np.testing.assert_allclose(read_one(tmp_path / "u.tif")[0], unit, atol=1e-6)
    Image.fromarray(unit * 1000 - 50).save(tmp_path / "w.tif")
    out = read_one(tmp_path / "w.tif")[0]
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_signed_int_tiff_is_min_max_scaled(tmp_path):
    Image.fromarray(GREY.astype(np.int32) - 100).save(tmp_path / "i.tif")
    out = read_one(tmp_path / "i.tif")[0]
    np.testing.assert_allclose(out, GREY / GREY.max(), atol=1e-6)


def test_constant_image_is_fine(tmp_path):
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "c.png")
    assert np.allclose(read_one(tmp_path / "c.png"), 7 / 255)


# --- errors ------------------------------------------------------------------------------------


def test_truncated_png_names_the_file_even_if_pillow_would_allow_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match="cut.png.*(truncated|corrupt)") as info:
        read_images(tmp_path / "cut.png", 1)
    assert info.value.path == str(tmp_path / "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png.*not an image"):
        read_images(tmp_path / "notes.png", 1)


@pytest.mark.parametrize("shape", [(1, 1), (7, 40)])
def test_too_small_images(tmp_path, shape):
    Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(ImageReadError, match=r"s.png.*smaller than 8"):
        read_images(tmp_path / "s.png", 1)


def test_too_large_image(tmp_path):
    Image.fromarray(np.zeros((8, MAX_SIDE + 1), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ImageReadError, match="wide.png.*larger than the limit"):
        read_images(tmp_path / "wide.png", 1)


def constant_png(path, width, height):
    """A valid all-black 1-bit PNG of any size, written row by row: a 10,000 px square is ~12 kB and
    never needs its 100 Mpx in memory."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte 0, then the bits
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_medad_s_size_limit_applies_not_pillow_s(tmp_path):
    """Issue 27: Pillow's 89 Mpx guard refused a 10,000 px square, within medad's documented 16,384
    a side; from its header (nothing decoded), medad's limit decides, and Pillow's own setting is
    left as it was for other code."""
    before = Image.MAX_IMAGE_PIXELS
    square = constant_png(tmp_path / "square.png", 10_000, 10_000)
    with open_pillow(square) as image:
        assert image.size == (10_000, 10_000)
    assert Image.MAX_IMAGE_PIXELS == before
    huge = constant_png(tmp_path / "huge.png", 20_000, 20_000)  # 400 Mpx: Pillow's own guard at medad's limit
    with pytest.raises(ImageReadError, match=r"huge.png.*larger than the limit \(16384 a side, 268435456 pixels\)"):
        open_pillow(huge)
    assert Image.MAX_IMAGE_PIXELS == before


def test_a_stricter_pillow_guard_does_not_refuse_what_medad_accepts(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # another library's setting
    assert read_one(tmp_path / "small.png").shape == (1, 64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back
    monkeypatch.setattr(readers, "MAX_PIXELS", 2000)  # medad's limit below the image: refused by name
    with pytest.raises(ImageReadError, match="small.png.*larger than the limit"):
        read_images(tmp_path / "small.png", 1)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_nan_in_float_tiff(tmp_path):
    pixels = np.zeros((8, 8), np.float32)
    pixels[2, 3] = np.nan
    Image.fromarray(pixels).save(tmp_path / "n.tif")
    with pytest.raises(ImageReadError, match="n.tif.*NaN"):
        read_images(tmp_path / "n.tif", 1)


def test_missing_file_and_error_pickles(tmp_path):
    with pytest.raises(ImageReadError, match="gone.png: file not found") as info:
        read_images(tmp_path / "gone.png", 1)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and isinstance(again, ValueError)


# --- DICOM -------------------------------------------------------------------------------------

RAW = (np.arange(12 * 10).reshape(12, 10) * 10).astype(np.uint16)  # 0 .. 1190


def test_dicom_without_window_is_min_max(tmp_path):
    out = read_one(write_dicom(tmp_path / "a.dcm", RAW))[0]
    np.testing.assert_allclose(out, RAW / RAW.max(), atol=1e-6)


def test_dicom_rescale_then_first_window(tmp_path):
    path = write_dicom(
        tmp_path / "w.dcm", RAW, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=[500, 1], WindowWidth=[1000, 1]
    )
    expected = np.clip((RAW * 2.0 - 100 - 0) / 1000, 0, 1)
    np.testing.assert_allclose(read_one(path)[0], expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", RAW, "MONOCHROME1", WindowCenter=600, WindowWidth=400)
    expected = 1 - np.clip((RAW - 400.0) / 400, 0, 1)
    np.testing.assert_allclose(read_one(path)[0], expected, atol=1e-6)


def test_dicom_multiframe_gives_one_image_per_frame(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", np.stack([RAW, RAW // 2, RAW // 4]))
    items = read_images(path, 1)
    assert [i for i, _ in items] == [f"{path}#frame={k}" for k in range(3)]
    assert items[0][1].max() == 1.0 and items[2][1].max() == pytest.approx(0.25, abs=0.01)  # one scale per file


def test_dicom_colour_and_extensionless_file(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RGB, "RGB", bits=8)
    assert list_image_files(tmp_path) == [path]
    np.testing.assert_allclose(read_one(path, 3), np.moveaxis(RGB, -1, 0) / 255, atol=1e-6)


def test_dicom_without_pixels(tmp_path):
    ds = Dataset()
    ds.PatientName = "Nobody"
    ds.save_as(tmp_path / "empty.dcm", implicit_vr=True, little_endian=True)
    with pytest.raises(ImageReadError, match="empty.dcm.*no pixel data"):
        read_images(tmp_path / "empty.dcm", 1)


# --- NIfTI -------------------------------------------------------------------------------------


def write_nifti(path, volume):
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


VOLUME = np.random.default_rng(0).normal(100, 20, (16, 12, 5)).astype(np.float32)


def expected_slice(volume, z):
    lo, hi = np.percentile(volume.astype(np.float64), [0.5, 99.5])
    return np.rot90(np.clip((volume[:, :, z] - lo) / (hi - lo), 0, 1))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_middle_slice_by_volume_percentiles(tmp_path, name):
    path = write_nifti(tmp_path / name, VOLUME)
    (image_id, pixels), = read_images(path, 1)
    assert image_id == f"{path}#z=2" and pixels.shape == (1, 12, 16)
    np.testing.assert_allclose(pixels[0], expected_slice(VOLUME, 2), atol=1e-5)


def test_nifti_all_and_index(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", VOLUME)
    assert [i for i, _ in read_images(path, 3, "all")] == [f"{path}#z={z}" for z in range(5)]
    (image_id, pixels), = read_images(path, 1, 4)
    assert image_id.endswith("#z=4")
    np.testing.assert_allclose(pixels[0], expected_slice(VOLUME, 4), atol=1e-5)
    with pytest.raises(ImageReadError, match="v.nii.gz.*nifti_slices=9"):
        read_images(path, 1, 9)


def test_nifti_nan_and_garbage(tmp_path):
    volume = VOLUME.copy()
    volume[1, 1, 1] = np.inf
    with pytest.raises(ImageReadError, match="nan.nii.*NaN/Inf"):
        read_images(write_nifti(tmp_path / "nan.nii", volume), 1)
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="bad.nii.gz"):
        read_images(tmp_path / "bad.nii.gz", 1)


# --- masks and folders -------------------------------------------------------------------------


def test_read_mask_binarises_grey_and_colour(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask // 255)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[1, 1, 2] = 9
    Image.fromarray(colour).save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png").sum() == 1 and read_mask(tmp_path / "c.png").dtype == np.uint8


@pytest.mark.parametrize("lesion, dtype", [(1, np.uint8), (255, np.uint8), (1, np.uint16), (65535, np.uint16)])
def test_a_zero_and_one_value_mask_is_lesion_wherever_it_is_not_zero(tmp_path, caplog, lesion, dtype):
    mask = np.zeros((8, 8), dtype)
    mask[2:4, 3:6] = lesion
    Image.fromarray(mask).save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask > 0)
    assert not caplog.records


def test_a_colour_mask_counts_its_brightest_channel(tmp_path):
    """A red lesion on black (luminance 0.3) and a palette mask are lesions where coloured."""
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2:4, 2:4, 0] = 255
    Image.fromarray(colour).save(tmp_path / "red.png")
    palette = Image.fromarray((colour[..., 0] > 0).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0])
    palette.save(tmp_path / "palette.png")
    for name in ("red.png", "palette.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), colour[..., 0] > 0)


def test_a_mask_that_is_not_binary_is_lesion_above_half_its_range_with_a_warning(tmp_path, caplog):
    """Issue 27: lesion 255 over a background of 1-3 was lesion on every pixel."""
    rng = np.random.default_rng(0)
    truth = np.zeros((16, 16), bool)
    truth[4:9, 5:12] = True
    noisy = np.where(truth, rng.integers(200, 256, truth.shape), rng.integers(1, 4, truth.shape)).astype(np.uint8)
    noisy[3, 5:12] = 127  # a resampled edge: half-way values count as background below 128 ...
    noisy[9, 5:12] = 128  # ... and as lesion from 128
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    expected = truth.copy()
    expected[9, 5:12] = True
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        np.testing.assert_array_equal(read_mask(tmp_path / "noisy.png"), expected)
    assert len(caplog.records) == 1 and "noisy.png" in caplog.text and "not a 0 / non-zero mask" in caplog.text
    two_levels = np.where(truth, 255, 1).astype(np.uint8)  # two values, but no 0: background 1 is not lesion
    Image.fromarray(two_levels).save(tmp_path / "two.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "two.png"), truth)
    sixteen = np.where(truth, 40000, 300).astype(np.uint16)
    sixteen[0, 0] = 32767
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "sixteen.png"), truth)


def test_a_jpeg_saved_mask_reads_as_its_lesion(tmp_path):
    truth = np.zeros((64, 64), np.uint8)
    truth[20:40, 16:48] = 255
    Image.fromarray(truth).save(tmp_path / "m.jpg", quality=75)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m.jpg")))) > 2  # JPEG did blur the edges
    mask = read_mask(tmp_path / "m.jpg")
    inner, outer = np.zeros_like(mask, bool), np.ones_like(mask, bool)
    inner[22:38, 18:46], outer[17:43, 13:51] = True, False
    assert mask[inner].all() and not mask[outer].any()  # at most the blurred 2-px edge may differ


def test_list_image_files_skips_and_logs(tmp_path, caplog):
    for name in ("b.png", "a.JPG", "scan.nii.gz", ".hidden.png", "notes.txt", "Thumbs.db", "labels.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is a folder
    with caplog.at_level(logging.INFO, logger="medad.data"):
        files = list_image_files(tmp_path)
    assert [f.name for f in files] == ["a.JPG", "b.png", "scan.nii.gz"]
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 6 and any("notes.txt" in m for m in skipped)
    assert any("folder.png (sub-folders are not searched" in m for m in skipped)


def test_recursive_listing_searches_no_folder_twice(tmp_path, caplog):
    """Issue 27: a folder holding a link to itself was searched ~40 times over (until ELOOP)."""
    for sub in ("a", "b/c"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "x.png").write_bytes(b"")
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a")
    (tmp_path / "b" / "c" / "up").symlink_to(tmp_path)  # a loop through the top folder
    (tmp_path / "b" / "twin").symlink_to(tmp_path / "b" / "c")  # a second name for one folder
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        files = list_image_files(tmp_path, recursive=True)
    assert [str(f.relative_to(tmp_path)) for f in files] == ["a/x.png", "b/c/x.png"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) == 3 and all(f"{name}: it is the folder" in warned for name in ("self", "up", "twin"))


def test_a_named_pipe_is_never_opened(tmp_path):
    """An extension-less entry is opened to look for a DICOM preamble: a named pipe would block."""
    (tmp_path / "a.png").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe")
    found = []
    lister = threading.Thread(target=lambda: found.extend(list_image_files(tmp_path)), daemon=True)
    lister.start()
    lister.join(timeout=20)
    if lister.is_alive():  # unblock it (a writer opening the pipe) before failing
        os.close(os.open(tmp_path / "pipe", os.O_WRONLY | os.O_NONBLOCK))
    assert not lister.is_alive() and [f.name for f in found] == ["a.png"]


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    listing = Path.iterdir

    def refuse(self):
        if self.name == "sub":
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refuse)  # the tests run as root, whom chmod does not stop
    with pytest.raises(ValueError, match=r"cannot list the folder .*sub: Permission denied"):
        list_image_files(tmp_path, recursive=True)


def test_list_image_files_errors(tmp_path):
    with pytest.raises(ValueError, match="folder not found"):
        list_image_files(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"no images found in .* \(looked for .*\.png"):
        list_image_files(tmp_path)
