"""The data layer on the real datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import pytest

from medad.config import DataConfig
from medad.data.loading import load_splits

pytestmark = pytest.mark.integration


def test_lgg_mini_folder(shared_data):
    root = shared_data / "lgg_brain_mri_mini"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    splits = load_splits(DataConfig(path=str(root), image_size=64, channels=3, val_fraction=0.1), seed=0)
    assert len(splits.train) + len(splits.val) == 24 and len(splits.val) == 2
    assert splits.train.images.shape[1:] == (3, 64, 64)
    assert (splits.test.labels == 0).sum() == 8 and (splits.test.labels == 1).sum() == 8
    abnormal = splits.test.labels == 1
    assert splits.test.has_mask[abnormal].all() and splits.test.masks[abnormal].flatten(1).any(1).all()
    assert set(splits.test.defects) == {"good", "tumor"} and splits.skipped == []
    assert len(splits.manifest.rows) == 40


def test_pneumoniamnist_official_counts(shared_data):
    path = shared_data / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    splits = load_splits(DataConfig(path=str(path), image_size=28), seed=0)
    assert len(splits.train) == 1214 and len(splits.val) == 135
    assert (splits.test.labels == 0).sum() == 234 and (splits.test.labels == 1).sum() == 390
    assert splits.test.defects.count("pneumonia") == 390
