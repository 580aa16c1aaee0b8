"""Phantom generator and phantom dataset writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medad.data.synthetic import make_phantoms, write_phantom_dataset


def test_same_seed_same_images_other_seed_other_images():
    a, _ = make_phantoms(4, 32, seed=1)
    b, _ = make_phantoms(4, 32, seed=1)
    c, _ = make_phantoms(4, 32, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("size", [16, 17, 48])
def test_lesion_mask_is_exactly_the_changed_pixels(size):
    normal, empty = make_phantoms(40, size, seed=3)
    abnormal, mask = make_phantoms(40, size, seed=3, lesion=True)
    assert empty.sum() == 0 and mask.dtype == torch.uint8 and mask.shape == (40, 1, size, size)
    assert torch.equal(abnormal != normal, mask.bool())
    assert mask.flatten(1).any(1).all()  # every lesion image has a lesion
    change = (abnormal - normal)[mask.bool()].abs()
    assert change.min() >= 0.1 and change.max() <= 0.2  # visible, not trivial
    assert (normal[mask.bool()] > 0.2).all()  # inside tissue, not on the background


def test_size_must_be_at_least_16():
    with pytest.raises(ValueError, match="at least 16"):
        make_phantoms(1, 15, seed=0)


def test_dataset_is_byte_identical_for_the_same_seed(tmp_path):
    first = write_phantom_dataset(tmp_path / "a", 6, 2, 3, size=24, seed=5)
    second = write_phantom_dataset(tmp_path / "b", 6, 2, 3, size=24, seed=5)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 6 + 2 + 3 + 3 + 1
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    mask = np.asarray(Image.open(first / "ground_truth/lesion/0000_mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    assert (first / "test/lesion/0000.png").is_file() and (first / "README.txt").is_file()


def test_rewriting_replaces_a_phantom_folder_but_refuses_others(tmp_path):
    out = write_phantom_dataset(tmp_path / "p", 5, 1, 1, size=16)
    write_phantom_dataset(out, 2, 1, 1, size=16)
    assert len(list((out / "train/good").iterdir())) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty and not a medad phantom dataset"):
        write_phantom_dataset(tmp_path / "mine", 2, 1, 1, size=16)
