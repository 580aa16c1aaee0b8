"""Shifting transformations for negative samples (Rafiee et al., thesis ch. 6-7) on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from medad.augment.negatives import (
    NEGATIVES,
    check_kinds,
    make_negatives,
    permute4,
    permute16,
    permute_patches,
    pixel_shuffle,
    rotate90,
    rotate_random,
)


def quarters_image(n: int, side: int = 4) -> torch.Tensor:
    """``n`` images whose four quarters are the constants 1, 2, 3, 4 (TL, TR, BL, BR)."""
    h = side // 2
    x = torch.empty(n, 1, side, side)
    x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:] = 1.0, 2.0, 3.0, 4.0
    return x


def quarter_values(x: torch.Tensor) -> list[tuple[int, ...]]:
    """The constant of each quarter of each image, in the order TL, TR, BL, BR."""
    h = x.shape[-1] // 2
    blocks = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
    return [tuple(int(b[i].unique().item()) for b in blocks) for i in range(len(x))]


def test_rotate90_turns_each_image_by_90_180_or_270_degrees() -> None:
    torch.manual_seed(0)
    x = torch.rand(30, 2, 5, 5)
    y = rotate90(x)
    turns = []
    for xi, yi in zip(x, y):
        matches = [k for k in range(4) if torch.equal(yi, torch.rot90(xi, k, dims=(-2, -1)))]
        assert len(matches) == 1 and matches[0] != 0
        turns.append(matches[0])
    assert set(turns) == {1, 2, 3}
    with pytest.raises(ValueError, match="square"):
        rotate90(torch.rand(4, 1, 4, 6))


def test_rotate_random_angle_is_between_30_and_330_degrees() -> None:
    torch.manual_seed(0)
    x = torch.zeros(200, 1, 33, 33)
    x[..., 16, 28] = 1.0  # one bright pixel 12 px right of the centre
    y = rotate_random(x)
    idx = y.flatten(1).argmax(1)
    rows, cols = (idx // 33).float() - 16, (idx % 33).float() - 16
    angle = torch.rad2deg(torch.atan2(-rows, cols)) % 360  # counter-clockwise from "right"
    assert angle.min() > 30 - 5 and angle.max() < 330 + 5  # up to the pixel grid's resolution
    assert angle.std() > 50  # spread over the range, not one angle


def test_permute4_is_a_non_identity_permutation_of_the_four_quarters() -> None:
    torch.manual_seed(0)
    x = quarters_image(300)
    orders = quarter_values(permute4(x))
    assert all(sorted(o) == [1, 2, 3, 4] and o != (1, 2, 3, 4) for o in orders)
    assert len(set(orders)) == 23  # every non-identity permutation occurs, not only CCD's 3 swaps


def test_permute16_moves_whole_patches_and_keeps_the_remainder_in_place() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)  # 4x4 grid of 2x2 patches + 2 px
    y = permute16(x)
    assert torch.equal(y[..., 8:, :], x[..., 8:, :]) and torch.equal(y[..., :, 8:], x[..., :, 8:])

    def patches(z: torch.Tensor) -> list[torch.Tensor]:
        return [z[0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] for r in range(4) for c in range(4)]

    for xi, yi in zip(x, y):
        source = patches(xi)
        found = [next(i for i, p in enumerate(source) if torch.equal(p, q)) for q in patches(yi)]
        assert sorted(found) == list(range(16)) and found != list(range(16))


def test_permute_patches_needs_at_least_one_pixel_per_patch() -> None:
    with pytest.raises(ValueError, match="4x4 grid"):
        permute_patches(torch.rand(1, 1, 3, 3), 4, 4)


def test_pixel_shuffle_keeps_the_pixels_of_each_image_and_moves_channels_together() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 3, 6, 6)
    y = pixel_shuffle(x)
    assert not torch.equal(x, y)
    for xi, yi in zip(x, y):
        as_set = lambda z: sorted(map(tuple, z.flatten(1).T.tolist()))  # noqa: E731  one RGB triple per pixel
        assert as_set(xi) == as_set(yi)


def test_make_negatives_gives_each_image_one_of_the_kinds() -> None:
    torch.manual_seed(0)
    x = quarters_image(60)
    y = make_negatives(x, ["rotate90", "permute4"])
    rotations = {tuple(quarter_values(torch.rot90(x[:1], k, dims=(-2, -1)))[0]): k for k in (1, 2, 3)}
    orders = quarter_values(y)
    assert all(o != (1, 2, 3, 4) and sorted(o) == [1, 2, 3, 4] for o in orders)
    # the three rotations are quarter orders too; permute4 also gives the other 20
    assert any(o in rotations for o in orders) and any(o not in rotations for o in orders)
    torch.manual_seed(1)
    again = make_negatives(x, ["rotate90", "permute4"])
    torch.manual_seed(1)
    assert torch.equal(again, make_negatives(x, ["rotate90", "permute4"]))


@pytest.mark.parametrize("kind", sorted(NEGATIVES))
def test_every_kind_keeps_shape_and_range(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    y = NEGATIVES[kind](x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_check_kinds_rejects_unknown_empty_and_repeated() -> None:
    for bad in (["nope"], [], ["rotate90", "rotate90"]):
        with pytest.raises(ValueError):
            check_kinds(bad)
