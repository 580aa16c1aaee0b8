"""Strong augmentations (CCD's A_n) on hand-made images, and the class layout of apply_strong."""

from __future__ import annotations

import pytest
import torch

from medad.augment.strong import (
    STRONG_AUGMENTATIONS,
    Cutout,
    GaussianNoise,
    QuarterPermutation,
    Rotation,
    apply_strong,
    identity,
    strong_transforms,
)

GRID = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).view(1, 1, 3, 3)


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        (1, [[3, 6, 9], [2, 5, 8], [1, 4, 7]]),
        (2, [[9, 8, 7], [6, 5, 4], [3, 2, 1]]),
        (3, [[7, 4, 1], [8, 5, 2], [9, 6, 3]]),
    ],
)
def test_rotation_is_exact_counter_clockwise(turns: int, expected: list[list[int]]) -> None:
    out = Rotation(turns)(GRID.expand(2, 3, 3, 3))
    assert torch.equal(out, torch.tensor(expected, dtype=torch.float).expand(2, 3, 3, 3))


def test_rotation_by_quarter_turns_needs_square_images() -> None:
    assert Rotation(2)(torch.rand(1, 1, 4, 6)).shape == (1, 1, 4, 6)
    with pytest.raises(ValueError, match="square"):
        Rotation(1)(torch.rand(1, 1, 4, 6))


def _quarters(x: torch.Tensor) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right quarters of even-sized images."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]


@pytest.mark.parametrize(
    ("swap_rows", "swap_cols", "order"),
    [(True, False, [2, 3, 0, 1]), (False, True, [1, 0, 3, 2]), (True, True, [3, 2, 1, 0])],
)
def test_permutation_moves_whole_quarters(swap_rows: bool, swap_cols: bool, order: list[int]) -> None:
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float).view(2, 3, 6, 8)  # every pixel distinct
    out = QuarterPermutation(swap_rows, swap_cols)(x)
    for position, source in enumerate(order):
        assert torch.equal(_quarters(out)[position], _quarters(x)[source])


def test_permutation_family_never_returns_the_identity_and_is_all_distinct() -> None:
    x = torch.arange(16, dtype=torch.float).view(1, 1, 4, 4)
    outs = [t(x) for t in STRONG_AUGMENTATIONS["permutation"]]
    assert len(outs) == 3
    assert all(not torch.equal(o, x) for o in outs)
    assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1 :])


def test_cutout_zeroes_exactly_one_rectangle_in_bounds() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 3, 20, 16) * 0.9 + 0.1  # no zeros before the cutout
    out = Cutout(min_side=0.25, max_side=0.5)(x)
    for before, after in zip(x, out):
        zero = after == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # same hole in every channel
        rows = zero[0].any(1).nonzero().flatten()
        cols = zero[0].any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width  # contiguous
        assert zero[0].sum() == height * width  # the bounding box is entirely zero: one rectangle
        assert 5 <= height <= 10 and 4 <= width <= 8
        assert torch.equal(after[~zero], before[~zero])


def test_cutout_uses_the_global_rng_and_checks_its_sides() -> None:
    x = torch.rand(4, 1, 16, 16)
    torch.manual_seed(3)
    a = Cutout()(x)
    torch.manual_seed(3)
    assert torch.equal(a, Cutout()(x))
    with pytest.raises(ValueError, match="min_side"):
        Cutout(min_side=0.6, max_side=0.5)


def test_gaussian_noise_has_the_requested_std_and_stays_in_range() -> None:
    torch.manual_seed(0)
    x = torch.full((4, 1, 128, 128), 0.5)
    noise = GaussianNoise(std=0.1)(x) - x
    assert noise.std().item() == pytest.approx(0.1, rel=0.02)
    assert abs(noise.mean().item()) < 0.005
    out = GaussianNoise()(torch.rand(2, 3, 32, 32))
    assert out.min() >= 0 and out.max() <= 1


def test_apply_strong_class_ids_line_up_with_the_transforms() -> None:
    x = torch.rand(3, 2, 8, 8)
    names = ["rotation", "permutation"]
    shifted, ids = apply_strong(x, names)
    transforms = strong_transforms(names)
    assert transforms[0] is identity and len(transforms) == 7
    assert shifted.shape == (21, 2, 8, 8) and ids.tolist() == [k for k in range(7) for _ in range(3)]
    for k, t in enumerate(transforms):
        assert torch.equal(shifted[ids == k], t(x))
    assert torch.equal(shifted[ids == 0], x)


def test_single_transform_families_add_one_class_each() -> None:
    shifted, ids = apply_strong(torch.rand(2, 1, 8, 8), ["cutout", "noise"])
    assert ids.tolist() == [0, 0, 1, 1, 2, 2] and shifted.shape == (6, 1, 8, 8)


@pytest.mark.parametrize(
    ("names", "message"),
    [(["flip"], "unknown strong augmentations \\['flip'\\]"), ([], "choose from"), (["noise", "noise"], "repeat")],
)
def test_bad_names_are_clear_errors(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_strong(torch.rand(2, 1, 8, 8), names)
