"""load_splits / load_images on tiny generated data; manifest and unlabeled pools."""

from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medad.config import DataConfig
from medad.data.imageset import ImageSet
from medad.data.loading import load_splits
from medad.data.preprocessor import Preprocessor
from medad.data.manifest import Manifest
from medad.data.pool import build_pool
from medad.data.readers import ImageReadError
from medad.data.synthetic import write_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "ph", 10, 3, 3, size=16, seed=0)


def config(path, **changes):
    return DataConfig(path=str(path), image_size=16, **changes)


def write_npz(path, n=(8, 6, 6)):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3 == 2).astype(np.int64)[:, None]  # 0 0 1 0 0 1 ...
    np.savez(path, **arrays)
    return path


def test_folder_splits(phantoms):
    splits = load_splits(config(phantoms, val_fraction=0.2, channels=3), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 6)
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert set(splits.train.labels.tolist()) == {0} and splits.val.defects == ["good", "good"]
    assert splits.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.test.has_mask.all() and splits.test.masks[3:].flatten(1).any(1).all()
    assert not {*splits.train.ids} & {*splits.val.ids} and not {*splits.val.ids} & {*splits.test.ids}
    assert all("/train/good/" in i for i in splits.train.ids + splits.val.ids)
    assert splits.unlabeled is None and splits.labelled_val is None and splits.skipped == []


def test_split_is_deterministic_by_seed(phantoms):
    first = load_splits(config(phantoms, val_fraction=0.3), seed=0)
    again = load_splits(config(phantoms, val_fraction=0.3), seed=0)
    other = [load_splits(config(phantoms, val_fraction=0.3), seed=s).val.ids for s in (1, 2, 3)]
    assert first.val.ids == again.val.ids and torch.equal(first.train.images, again.train.images)
    assert any(ids != first.val.ids for ids in other)
    assert first.manifest.digest() == again.manifest.digest()


def test_val_fraction_zero_and_max_train(phantoms):
    splits = load_splits(config(phantoms, val_fraction=0.0, max_train=4), seed=0)
    assert len(splits.train) == 4 and len(splits.val) == 0 and splits.val.images.shape == (0, 1, 16, 16)
    tiny = load_splits(config(phantoms, val_fraction=0.01, max_train=2), seed=0)
    assert (len(tiny.train), len(tiny.val)) == (1, 1)


def test_manifest_hashes_roles_and_csv(phantoms, tmp_path):
    manifest = load_splits(config(phantoms), seed=0).manifest
    roles = [r.role for r in manifest.rows]
    assert roles.count("train") + roles.count("val") == 10
    assert (roles.count("test-normal"), roles.count("test-abnormal")) == (3, 3)
    for row in manifest.rows:
        assert not row.id.startswith("/")  # relative to the dataset folder
        assert row.sha256 == hashlib.sha256((phantoms / row.id).read_bytes()).hexdigest()
    manifest.write_csv(tmp_path / "manifest.csv")
    again = Manifest.read_csv(tmp_path / "manifest.csv")
    assert again.rows == manifest.rows and again.digest() == manifest.digest()


def test_manifest_digest_follows_content_not_location(phantoms, tmp_path):
    moved = shutil.copytree(phantoms, tmp_path / "elsewhere")
    digest = load_splits(config(phantoms), seed=0).manifest.digest()
    assert load_splits(config(moved), seed=0).manifest.digest() == digest
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(moved / "test/good/0000.png")
    assert load_splits(config(moved), seed=0).manifest.digest() != digest


def test_on_error_skip_and_raise(phantoms, tmp_path, caplog):
    root = shutil.copytree(phantoms, tmp_path / "ph")
    (root / "train/good/0003.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="0003.png"):
        load_splits(config(root, val_fraction=0.0), seed=0)
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        splits = load_splits(config(root, val_fraction=0.0, on_error="skip"), seed=0)
    assert len(splits.train) == 9 and splits.skipped[0][0].endswith("0003.png")
    assert not any(r.id.endswith("0003.png") for r in splits.manifest.rows)
    assert any("0003.png" in r.getMessage() for r in caplog.records)


def test_no_test_folder_and_format_errors(phantoms, tmp_path):
    root = tmp_path / "train_only"
    shutil.copytree(phantoms / "train", root / "train")
    assert load_splits(config(root), seed=0).test is None
    with pytest.raises(ValueError, match="data path not found"):
        load_splits(config(tmp_path / "nothing"), seed=0)
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(ValueError, match="neither a folder"):
        load_splits(config(tmp_path / "x.csv"), seed=0)
    with pytest.raises(ValueError, match="data.format is 'medmnist' but .* is a folder"):
        load_splits(config(root, format="medmnist"), seed=0)
    with pytest.raises(ValueError, match="data.path is not set"):
        load_splits(DataConfig(), seed=0)


def test_byte_identical_test_image_is_reported(phantoms, tmp_path, caplog):
    root = shutil.copytree(phantoms, tmp_path / "ph")
    shutil.copy(root / "train/good/0000.png", root / "test/good/copy.png")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        load_splits(config(root), seed=0)
    assert any("byte-identical" in r.getMessage() for r in caplog.records)


def test_a_validation_normal_that_is_a_training_normal_under_another_name_is_reported(phantoms, tmp_path, caplog):
    root = shutil.copytree(phantoms, tmp_path / "ph")
    for i in range(20):  # copies of one image: wherever the seeded split puts them, some land on each side
        shutil.copy(root / "train/good/0000.png", root / f"train/good/copy{i:02d}.png")
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        splits = load_splits(config(root), seed=0)
    val_ids = {r.id for r in splits.manifest.rows if r.role == "val"}
    assert any("copy" in i or i.endswith("0000.png") for i in val_ids)
    assert "validation normals are byte-identical to training normals" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medad.data"):
        load_splits(config(phantoms), seed=0)
    assert "byte-identical" not in caplog.text


def test_medmnist_splits_use_normals_of_train_and_val(tmp_path):
    path = write_npz(tmp_path / "pneumoniamnist.npz")
    splits = load_splits(config(path, val_fraction=0.5), seed=0)
    assert len(splits.train) == 6 and len(splits.val) == 4 and len(splits.test) == 6
    assert set(splits.train.labels.tolist()) == {0} and set(splits.val.labels.tolist()) == {0}
    assert splits.test.labels.tolist() == [0, 0, 1, 0, 0, 1] and splits.test.masks is None
    raw = np.load(path)["train_images"]
    row = next(r for r in splits.manifest.rows if r.id == "pneumoniamnist.npz#train/1")
    assert row.role == "train" and row.sha256 == hashlib.sha256(raw[1].tobytes()).hexdigest()
    limited = load_splits(config(path, max_train=3, val_fraction=0.0), seed=0)
    assert len(limited.train) == 3 and len(limited.val) == 0


def test_labelled_val_and_unlabeled_sources(phantoms, tmp_path):
    npz = write_npz(tmp_path / "pneumoniamnist.npz")
    splits = load_splits(config(npz, labelled_val=str(npz), unlabeled=str(phantoms / "train/good")), seed=0)
    assert splits.labelled_val.labels.tolist() == [0, 0, 1, 0, 0, 1]
    assert len(splits.unlabeled) == 10 and set(splits.unlabeled.labels.tolist()) == {-1}
    roles = {r.role for r in splits.manifest.rows}
    assert {"labelled-val", "unlabeled"} <= roles

    labelled = tmp_path / "lv"
    shutil.copytree(phantoms / "test", labelled)
    folder = load_splits(config(phantoms, labelled_val=str(labelled), unlabeled=str(npz)), seed=0)
    assert folder.labelled_val.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(folder.unlabeled) == 8
    shutil.rmtree(labelled / "lesion")
    with pytest.raises(ValueError, match="needs both normal and abnormal"):
        load_splits(config(phantoms, labelled_val=str(labelled)), seed=0)


def test_preprocessor_reads_files_and_folders(phantoms, tmp_path):
    images = Preprocessor(image_size=8, channels=3).read([phantoms / "test/good", phantoms / "test/lesion/0000.png"])
    assert len(images) == 4 and images.images.shape == (4, 3, 8, 8) and set(images.labels.tolist()) == {-1}
    grey = Preprocessor(image_size=8, channels=1)
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        grey.read([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="none of the 1 given images could be read"):
        grey.read([tmp_path / "missing.png"], on_error="skip")


def imageset(n, value):
    return ImageSet(torch.full((n, 1, 8, 8), float(value)), torch.full((n,), value), [f"{value}-{i}" for i in range(n)])


def test_build_pool():
    pool, hidden = build_pool(imageset(20, 0), imageset(10, 1), size=15, anomaly_rate=0.2, seed=0)
    assert len(pool) == 15 and set(pool.labels.tolist()) == {-1} and hidden.sum() == 3
    assert np.array_equal(hidden, pool.images[:, 0, 0, 0].numpy().astype(np.int64))  # labels follow images
    again, _ = build_pool(imageset(20, 0), imageset(10, 1), size=15, anomaly_rate=0.2, seed=0)
    assert again.ids == pool.ids
    with pytest.raises(ValueError, match="needs 8 abnormal images, only 5 given"):
        build_pool(imageset(20, 0), imageset(5, 1), size=16, anomaly_rate=0.5, seed=0)


@pytest.mark.parametrize("mode", ["minmax", "percentile"])
def test_intensity_normalisation_is_per_image_idempotent_and_in_range(mode):
    from medad.data.preprocess import normalize_intensity

    torch.manual_seed(0)
    dim, bright = torch.rand(1, 3, 16, 16) * 0.3, torch.rand(1, 3, 16, 16) * 0.3 + 0.6
    bright[0, 0, 0, 0] = 1.0  # one hot pixel
    x = torch.cat([dim, bright, torch.full((1, 3, 16, 16), 0.4)])
    once = normalize_intensity(x, mode)
    assert once.min() == 0.0 and once.max() <= 1.0
    assert torch.equal(normalize_intensity(once, mode), once)
    assert torch.equal(once[2], torch.zeros(3, 16, 16))  # a constant image
    if mode == "minmax":
        assert torch.allclose(once[0], (dim[0] - dim.min()) / (dim.max() - dim.min()))
    else:  # the hot pixel is clipped and does not set the scale: most pixels keep their spread
        assert once[1].max() == 1.0 and once[1].flatten().quantile(0.99) < 1.0
        assert once[1].std() > 0.25
    assert torch.equal(normalize_intensity(x, "as_read"), x)


def test_model_applies_the_configured_intensity_scaling_to_every_input():
    from medad.config import RunConfig
    from medad.model import AnomalyDetector

    model = AnomalyDetector(RunConfig.model_validate({"data": {"image_size": 8, "intensity": "minmax"}}))
    dim = torch.rand(2, 1, 8, 8) * 0.2 + 0.1
    out = model.prepare(dim)
    assert torch.allclose(out.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(2))
    assert torch.equal(model.prepare(out), out)
