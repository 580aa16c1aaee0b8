"""MVTec-layout scanning, file loading with masks, plain folders, preprocessing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medad.data.folder import FileItem, load_files, load_plain_folder, scan_folder, scan_labelled
from medad.data.preprocess import resize_masks, to_tensor_batch
from medad.data.readers import ImageReadError


def save(path, shape=(12, 12), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def mvtec(root):
    """train/good: 3, test/good: 2, test/cyst: 3 (masks: one *_mask.png, one <stem>.png, one missing)."""
    for i in range(3):
        save(root / "train/good" / f"{i}.png", value=10 * i)
    for i in range(2):
        save(root / "test/good" / f"g{i}.png")
    for i in range(3):
        save(root / "test/cyst" / f"c{i}.png", value=200)
    mask = np.zeros((12, 12), np.uint8)
    mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(save(root / "ground_truth/cyst/c0_mask.png"))
    Image.fromarray(mask).save(save(root / "ground_truth/cyst/c1.png"))
    return root


def test_scan_folder_finds_labels_defects_and_masks(tmp_path):
    layout = scan_folder(mvtec(tmp_path))
    assert [p.name for p in layout.train] == ["0.png", "1.png", "2.png"]
    found = [(t.path.name, t.label, t.defect, t.mask.name if t.mask else None) for t in layout.test]
    assert found == [
        ("g0.png", 0, "good", None),
        ("g1.png", 0, "good", None),
        ("c0.png", 1, "cyst", "c0_mask.png"),
        ("c1.png", 1, "cyst", "c1.png"),
        ("c2.png", 1, "cyst", None),
    ]


def test_unmatched_masks_and_abnormal_images_without_one_are_named(tmp_path, caplog):
    """Issue 27: ``0000-mask.png`` for ``0000.png`` was ignored without a word and its image scored
    without a mask. So is a ``Cyst/`` folder for ``test/cyst/``; a mask in another image format is
    found; masks of normal images are not read, and not called unmatched."""
    mvtec(tmp_path)  # c2.png has no mask
    save(tmp_path / "ground_truth/cyst/c2-mask.png")
    save(tmp_path / "ground_truth/Cyst/c2_mask.png")
    save(tmp_path / "ground_truth/good/g0_mask.png")
    (tmp_path / "ground_truth/cyst/notes.txt").write_text("not a mask")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        items = scan_folder(tmp_path).test
    assert [i.mask is None for i in items] == [True, True, False, False, True]
    unmatched, missing = (r.getMessage() for r in caplog.records)
    assert unmatched.startswith("2 mask files under") and "Cyst/c2_mask.png, cyst/c2-mask.png" in unmatched
    assert missing.startswith("1 abnormal images have no mask") and missing.endswith(": test/cyst/c2.png")
    caplog.clear()
    save(tmp_path / "ground_truth/cyst/c2_mask.tif")
    for stray in ("cyst/c2-mask.png", "Cyst/c2_mask.png"):
        (tmp_path / "ground_truth" / stray).unlink()
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        items = scan_folder(tmp_path).test
    assert items[-1].mask.name == "c2_mask.tif" and not caplog.records


def test_without_ground_truth_masks_are_not_expected(tmp_path, caplog):
    save(tmp_path / "train/good/a.png")
    save(tmp_path / "test/cyst/c.png")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        assert scan_folder(tmp_path).test[0].mask is None
    assert not caplog.records


def test_scan_folder_without_test_is_train_only(tmp_path):
    save(tmp_path / "train/good/a.png")
    assert scan_folder(tmp_path).test == []


def test_scan_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no train/good folder"):
        scan_folder(tmp_path)
    (tmp_path / "train/good").mkdir()
    (tmp_path / "train/good/list.txt").write_text("")
    with pytest.raises(ValueError, match="no images found in .*good"):
        scan_folder(tmp_path)


def test_images_loose_in_test_folder_are_refused(tmp_path):
    save(tmp_path / "train/good/a.png")
    save(tmp_path / "test/b.png")
    with pytest.raises(ValueError, match="holds images directly"):
        scan_folder(tmp_path)


def test_load_files_with_masks(tmp_path):
    layout = scan_folder(mvtec(tmp_path))
    loaded = load_files(layout.test, image_size=24, channels=3)
    images = loaded.images
    assert images.images.shape == (5, 3, 24, 24) and images.masks.shape == (5, 1, 24, 24)
    assert images.labels.tolist() == [0, 0, 1, 1, 1] and images.defects[2] == "cyst"
    assert images.has_mask.tolist() == [True, True, True, True, False]  # normals: known empty masks
    assert images.masks[2].sum() == 3 * 4 * 4 and images.masks[[0, 1, 4]].sum() == 0
    assert len(loaded.sha256) == 5 and loaded.skipped == []


def test_mask_of_the_wrong_size_names_both_files(tmp_path):
    image = save(tmp_path / "test/cyst/x.png", shape=(12, 12))
    mask = save(tmp_path / "gt/x_mask.png", shape=(10, 12))
    items = [FileItem(image, 1, "cyst", mask)]
    with pytest.raises(ImageReadError, match=r"x.png: its mask .*x_mask.png is 10x12 pixels but the image is 12x12"):
        load_files(items, image_size=8, channels=1)
    loaded = load_files(items, image_size=8, channels=1, on_error="skip")
    assert len(loaded.images) == 0 and loaded.skipped[0][0] == str(image)


def test_a_resampled_mask_gains_no_lesion_pixels_on_loading(tmp_path, caplog):
    """A mask with grey edges (background 1-3, lesion 255) is lesion where >= 128, before the
    nearest-neighbour resize, which creates no value the mask did not have."""
    image = save(tmp_path / "test/cyst/x.png", shape=(16, 16), value=100)
    mask = np.full((16, 16), 2, np.uint8)
    mask[4:12, 4:8] = 255
    mask[4:12, 8] = 100  # an interpolated edge: background
    Image.fromarray(mask).save(tmp_path / "x_mask.png")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        loaded = load_files([FileItem(image, 1, "cyst", tmp_path / "x_mask.png")], image_size=8, channels=1)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:4] = 1
    assert np.array_equal(loaded.images.masks[0, 0].numpy(), expected)
    assert "x_mask.png is not a 0 / non-zero mask" in caplog.text


def test_a_file_gone_after_decoding_is_an_image_read_error(tmp_path, monkeypatch):
    from medad.data import folder

    good, gone = save(tmp_path / "a.png"), save(tmp_path / "b.png")

    def vanish(path):
        if path == gone:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return "0" * 64

    monkeypatch.setattr(folder, "sha256_file", vanish)
    with pytest.raises(ImageReadError, match="b.png: cannot be read again"):
        load_files([FileItem(good), FileItem(gone)], image_size=8, channels=1)
    loaded = load_files([FileItem(good), FileItem(gone)], image_size=8, channels=1, on_error="skip")
    assert loaded.images.ids == [str(good)] and loaded.skipped[0][0] == str(gone)


def test_skip_mode_logs_and_records(tmp_path, caplog):
    good = save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"broken")
    items = [FileItem(good), FileItem(tmp_path / "b.png")]
    with pytest.raises(ImageReadError, match="b.png"):
        load_files(items, image_size=8, channels=1)
    loaded = load_files(items, image_size=8, channels=1, on_error="skip")
    assert loaded.images.ids == [str(good)] and loaded.skipped[0][0] == str(tmp_path / "b.png")
    assert any("b.png" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_plain_folder_is_unlabeled(tmp_path):
    save(tmp_path / "x.png")
    save(tmp_path / "y.png", shape=(20, 9))
    images = load_plain_folder(tmp_path, image_size=16, channels=1).images
    assert images.labels.tolist() == [-1, -1] and images.masks is None and images.images.shape == (2, 1, 16, 16)


def test_labelled_folder_ignores_its_ground_truth_subfolder(tmp_path):
    save(tmp_path / "good/a.png")
    save(tmp_path / "bleed/b.png")
    save(tmp_path / "ground_truth/bleed/b_mask.png")
    items = scan_labelled(tmp_path, tmp_path / "ground_truth")
    assert [(i.defect, i.mask is not None) for i in items] == [("good", False), ("bleed", True)]


def test_square_resize_ignores_aspect_ratio_and_keeps_range():
    stripes = np.zeros((1, 20, 40), np.float32)
    stripes[:, :, ::2] = 1.0
    out = to_tensor_batch([stripes, np.ones((1, 8, 8), np.float32)], 16)
    assert out.shape == (2, 1, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0], torch.full((1, 16, 16), 0.5), atol=0.06)  # antialiased, not aliased
    assert torch.equal(out[1], torch.ones(1, 16, 16))


def test_resize_masks_is_nearest_and_binary():
    mask = np.zeros((10, 10), np.uint8)
    mask[:5] = 1
    out = resize_masks([mask], 4)
    assert out.dtype == torch.uint8 and out[0, 0].tolist() == [[1] * 4, [1] * 4, [0] * 4, [0] * 4]
