"""Batched weak augmentations: range, reproducibility, neutral settings, exact flips."""

from __future__ import annotations

import pytest
import torch

from medad.augment.weak import (
    WeakAugment,
    brightness_contrast,
    gaussian_blur,
    random_grayscale,
    random_resized_crop_rotate_flip,
)

from tolerance import tolerance  # tests/ is on sys.path


def _images(channels: int = 1, n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _warp_atol(side: int) -> float:
    """``atol`` of a neutral warp (affine_grid + grid_sample) of ``side`` px images in [0, 1] against the identity.

    The sampling grid's normalised coordinates carry a few float32 roundings, which unnormalising
    magnifies by side / 2: each sample lands up to about ``side * 2**-24`` px off its pixel centre
    per axis (0.5 to 1.1 times that measured, depending on the CPU kernel), and bilinear
    interpolation moves it by that offset times the neighbouring pixels' difference (at most 1 in
    [0, 1] images). 4x that on both axes; a wrong crop, shift or flip is off by more than 0.1.
    """
    return 8 * side * 2.0**-24


@pytest.mark.parametrize("channels", [1, 3])
def test_weak_augment_range_shape_and_seeding(channels: int) -> None:
    x = _images(channels)
    aug = WeakAugment(grayscale_p=0.5, blur_p=0.5)
    a, b, c = aug(x, generator=_gen(1)), aug(x, generator=_gen(1)), aug(x, generator=_gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_global_rng_is_used_without_generator() -> None:
    x = _images()
    torch.manual_seed(5)
    a = WeakAugment()(x)
    torch.manual_seed(5)
    assert torch.equal(a, WeakAugment()(x))


def test_per_sample_parameters_differ() -> None:
    x = _images(n=1).expand(8, -1, -1, -1)  # the same image 8 times
    y = WeakAugment()(x, generator=_gen(0))
    assert len({round(float(v), 5) for v in y.flatten(1).mean(1)}) == 8


def test_neutral_geometry_is_identity_and_flip_is_exact() -> None:
    x = _images(3)
    neutral = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0)
    atol = _warp_atol(16)
    assert torch.allclose(random_resized_crop_rotate_flip(x, **neutral, hflip_p=0.0), x, atol=atol)
    assert torch.allclose(random_resized_crop_rotate_flip(x, **neutral, hflip_p=1.0), x.flip(-1), atol=atol)
    for padding_mode in ("reflection", "zeros"):
        same = random_resized_crop_rotate_flip(x, **neutral, hflip_p=0.0, padding_mode=padding_mode)
        assert torch.allclose(same, x, atol=atol)


def test_neutral_weak_augment_is_identity() -> None:
    x = _images(1)
    aug = WeakAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0, hflip_p=0, brightness=0, contrast=0)
    # the neutral warp's offsets, then (x - mean) + mean: two more roundings of at most 2**-25 each
    assert torch.allclose(aug(x, generator=_gen(0)), x, atol=_warp_atol(16) + 2.0**-24)


def test_crop_zooms_in() -> None:
    # a centred quarter-area crop of a horizontal ramp spans half of the ramp's range
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32)
    y = random_resized_crop_rotate_flip(ramp, scale=(0.25, 0.25), ratio=(1, 1), degrees=0, hflip_p=0)
    span = y[0, 0, 0, -1] - y[0, 0, 0, 0]
    assert 0.4 < span < 0.55


def test_rotation_is_bounded_by_degrees() -> None:
    # 90 degrees would turn a horizontal ramp vertical; 20 degrees keeps it mostly horizontal
    ramp = torch.linspace(0, 1, 32).expand(16, 1, 32, 32)
    y = random_resized_crop_rotate_flip(ramp, scale=(1, 1), degrees=20, hflip_p=0, generator=_gen(0))
    dx = (y[..., 1:] - y[..., :-1]).abs().mean()
    dy = (y[..., 1:, :] - y[..., :-1, :]).abs().mean()
    assert dx > 2 * dy > 0


def test_brightness_contrast() -> None:
    x = _images(3)
    assert torch.allclose(brightness_contrast(x, 0.0, 0.0, generator=_gen(0)), x, atol=1e-6)
    y = brightness_contrast(x, 0.4, 0.4, generator=_gen(0))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)
    # contrast alone keeps each image's mean when nothing is clipped
    mid = 0.4 + 0.2 * x
    z = brightness_contrast(mid, 0.0, 0.5, generator=_gen(0))
    # float32 means over 3 x 16 x 16 = 768 values near 0.5: the image's, which the contrast pivots on,
    # and the result's (9e-5 here; a pivot at 0 instead would move the mean by 0.5 |c - 1|)
    tol = tolerance(torch.float32, terms=3 * 16 * 16)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), mid.mean(dim=(1, 2, 3)), rtol=tol["rtol"], atol=tol["atol"])


def test_grayscale_and_blur() -> None:
    x = _images(3)
    grey = random_grayscale(x, p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 2])
    assert torch.equal(random_grayscale(x, p=0.0), x)
    one = _images(1)
    assert random_grayscale(one, p=1.0) is one
    blurred = gaussian_blur(x, sigma=(1.0, 1.0), p=1.0)
    assert blurred.std() < x.std() and torch.allclose(blurred.mean(), x.mean(), atol=0.01)
    assert torch.equal(gaussian_blur(x, p=0.0), x)
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, p=1.0), flat)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop_rotate_flip(_images(), scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="channels"):
        random_grayscale(torch.rand(1, 2, 4, 4))
