"""MedMNIST .npz reading (fake files written in tmp_path) and the offline download error."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medad.data.medmnist import dataset_name, download_medmnist, load_medmnist, load_npz_images
from medad.data.readers import ImageReadError


def write_npz(path, labels=None, images=None, label_shape=(-1, 1), **extra):
    """Splits of 6/4/4 images of 8x8; labels 0,1 alternating unless given."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) if images is None else images[:n]
        y = np.arange(n) % 2 if labels is None else np.asarray(labels)[:n]
        arrays[f"{split}_labels"] = y.reshape(label_shape)
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_known_normal_label_and_splits(tmp_path):
    data = load_medmnist(write_npz(tmp_path / "pneumoniamnist.npz"))
    assert data.normal_label == 0 and data.name == "pneumoniamnist"
    test, hashes = data.imageset("test", image_size=16, channels=3)
    assert test.images.shape == (4, 3, 16, 16) and test.labels.tolist() == [0, 1, 0, 1]
    assert test.defects == ["good", "pneumonia", "good", "pneumonia"]
    assert test.ids[1] == f"{tmp_path / 'pneumoniamnist.npz'}#test/1"
    assert hashes[1] == hashlib.sha256(data.images["test"][1].tobytes()).hexdigest()
    val, _ = data.imageset("val", image_size=8, channels=1, index=data.normal_index("val"))
    assert val.ids == [f"{data.path}#val/0", f"{data.path}#val/2"]
    np.testing.assert_allclose(val.images[0, 0].numpy(), data.images["val"][0] / 255, atol=1e-6)


def test_breastmnist_normal_is_one_and_flat_labels(tmp_path):
    data = load_medmnist(write_npz(tmp_path / "breastmnist_128.npz", label_shape=(-1,)))
    assert dataset_name(data.path) == "breastmnist" and data.normal_label == 1
    test, _ = data.imageset("test", image_size=8, channels=1)
    assert test.labels.tolist() == [1, 0, 1, 0] and test.defects[1] == "good"


def test_unknown_dataset_needs_normal_label(tmp_path):
    path = write_npz(tmp_path / "organmnist.npz", labels=[0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"set data.normal_label to one of \[0, 1, 2\]"):
        load_medmnist(path)
    data = load_medmnist(path, normal_label=2)
    test, _ = data.imageset("test", image_size=8, channels=1)
    assert test.labels.tolist() == [1, 1, 0, 1] and test.defects == ["label_0", "label_1", "good", "label_0"]
    with pytest.raises(ValueError, match="normal_label=5.*labels present: \\[0, 1, 2\\]"):
        load_medmnist(path, normal_label=5)


def test_rgb_images_to_luminance(tmp_path):
    rgb = np.zeros((6, 8, 8, 3), np.uint8)
    rgb[..., 1] = 255
    data = load_medmnist(write_npz(tmp_path / "x.npz", images=rgb), normal_label=0)
    train, _ = data.imageset("train", image_size=8, channels=1)
    assert np.allclose(train.images.numpy(), 0.587, atol=1e-6)


def test_nan_and_bad_dtype_are_errors(tmp_path):
    images = np.zeros((6, 8, 8), np.float32)
    images[3, 1, 1] = np.nan
    with pytest.raises(ImageReadError, match=r"nan.npz.*train_images has NaN/Inf values in 1 images \(indices \[3\]"):
        load_medmnist(write_npz(tmp_path / "nan.npz", images=images), normal_label=0)
    with pytest.raises(ImageReadError, match="int32.*expected uint8"):
        load_medmnist(write_npz(tmp_path / "int.npz", images=np.zeros((6, 8, 8), np.int32)), normal_label=0)
    with pytest.raises(ImageReadError, match="not within"):
        load_medmnist(write_npz(tmp_path / "big.npz", images=np.full((6, 8, 8), 3.0)), normal_label=0)


def test_not_medmnist_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ImageReadError, match=r"other.npz: not a MedMNIST file: missing .*it holds \['a'\]"):
        load_medmnist(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ImageReadError, match="text.npz: not a readable .npz"):
        load_medmnist(tmp_path / "text.npz")
    write_npz(tmp_path / "multi.npz", label_shape=(-1, 2), labels=np.zeros(12, int))
    with pytest.raises(ImageReadError, match="multi-label"):
        load_medmnist(tmp_path / "multi.npz", normal_label=0)


def test_unlabeled_npz_images(tmp_path):
    np.savez(tmp_path / "pool.npz", images=np.zeros((3, 8, 8), np.uint8))
    images, hashes = load_npz_images(tmp_path / "pool.npz", image_size=8, channels=1)
    assert images.labels.tolist() == [-1, -1, -1] and images.ids[0].endswith("pool.npz#images/0") and len(hashes) == 3


def test_download_error_when_offline(tmp_path):
    with pytest.raises(RuntimeError, match="could not reach it.*local .npz path"):
        download_medmnist("pneumoniamnist", tmp_path, url="http://127.0.0.1:9/{flag}.npz", timeout=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not a MedMNIST flag"):
        download_medmnist("../etc", tmp_path)
