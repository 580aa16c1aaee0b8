"""CON2 context augmentations: exactness of invert / flip / equalize, the assumptions helper, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medad.augment.context import (
    CONTEXTS,
    context_assumptions,
    context_features,
    context_transform,
    equalize,
    flip,
    invert,
    save_context_grid,
)
from medad.data.synthetic import make_phantoms


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_invert_is_an_involution() -> None:
    grid = torch.arange(257.0).div(256).view(1, 1, 1, 257)  # exact in float32
    assert torch.equal(invert(invert(grid)), grid) and torch.equal(invert(grid), grid.flip(-1))
    x = _rand(4, 3, 8, 8)
    assert (invert(invert(x)) - x).abs().max() <= 2.0**-25


def test_flip_is_an_exact_vertical_involution() -> None:
    x = _rand(3, 2, 5, 4)
    assert torch.equal(flip(flip(x)), x)
    assert torch.equal(flip(x)[:, :, 0], x[:, :, -1]) and torch.equal(flip(x)[..., 0], x[..., 0].flip(-1))


def test_equalize_maps_a_known_histogram_exactly() -> None:
    # 16 pixels: value 0.1 x 4, 0.2 x 4, 0.5 x 8 -> counts 4, 8, 16, c_min = 4 -> 0, 1/3, 1
    x = torch.tensor([0.1] * 4 + [0.2] * 4 + [0.5] * 8)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    out = equalize(x.view(1, 1, 4, 4)).flatten()
    expected = torch.where(x == 0.1, 0.0, torch.where(x == 0.2, 1 / 3, 1.0))
    assert torch.allclose(out, expected, atol=1e-7)


def test_equalize_makes_distinct_values_exactly_uniform() -> None:
    x = _rand(2, 3, 6, 6) ** 3  # skewed towards dark, all values distinct
    out = equalize(x)
    uniform = torch.linspace(0, 1, 36)
    assert torch.allclose(out.flatten(2).sort(-1).values, uniform.expand(2, 3, 36), atol=1e-6)
    assert torch.equal(out.flatten(2).argsort(-1), x.flatten(2).argsort(-1))  # order kept


def test_equalize_cdf_is_uniform_apart_from_the_minimum() -> None:
    x = torch.round(_rand(1, 1, 32, 32, seed=1) ** 2 * 20) / 20  # 21 levels, many ties
    y = equalize(x).flatten()
    share_min = float((x.flatten() == x.min()).float().mean())
    for level in y.unique():
        cdf = float((y <= level).float().mean())
        assert cdf == pytest.approx(share_min + float(level) * (1 - share_min), abs=1e-6)


def test_equalize_is_idempotent_per_image_and_channel_but_not_an_involution() -> None:
    x = torch.round(_rand(3, 3, 16, 16, seed=2) * 255) / 255  # 8-bit values with ties
    x[1, 2] = 0.4  # a constant channel stays unchanged
    once = equalize(x)
    assert torch.equal(equalize(once), once)
    assert torch.equal(once[1, 2], x[1, 2])
    assert not torch.allclose(equalize(once), x)
    assert torch.equal(equalize(x[2:]), once[2:])  # independent of the rest of the batch
    assert once.min() >= 0 and once.max() <= 1


def test_context_transform_names() -> None:
    assert sorted(CONTEXTS) == ["equalize", "flip", "invert"] and context_transform("flip") is flip
    with pytest.raises(ValueError, match="known contexts: equalize, flip, invert"):
        context_transform("rotate")


def test_assumptions_on_phantoms() -> None:
    images = make_phantoms(40, 32, seed=0)[0]
    inverted = context_assumptions(images, "invert")
    flipped = context_assumptions(images, "flip")
    equalized = context_assumptions(images, "equalize")
    assert inverted.context == "invert" and inverted.distinctiveness > 0.95
    assert flipped.alignment == pytest.approx(1.0) and inverted.alignment == pytest.approx(1.0)
    assert equalized.alignment < 0.99


def test_flip_of_orientation_free_noise_is_not_distinctive() -> None:
    # i.i.d. pixel noise looks the same upside down: the probe should be near chance
    report = context_assumptions(_rand(200, 1, 8, 8, seed=3), "flip")
    assert report.distinctiveness < 0.65 and report.alignment == pytest.approx(1.0)


def test_features_with_an_encoder_use_eval_mode_and_restore_it() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16)).train()
    x = _rand(5, 1, 4, 4)
    a, b = context_features(x, "invert", encoder, batch_size=2)
    assert encoder.training and a.shape == (5, 16)
    assert torch.allclose(a + b, torch.full_like(a, 1 / np.sqrt(1 + 1e-5)), atol=1e-5)  # eval-mode BN
    assert context_assumptions(x, "flip", encoder, max_images=4).alignment == pytest.approx(1.0)


def test_context_grid(tmp_path) -> None:
    x = _rand(3, 1, 8, 8)
    out = save_context_grid(x, tmp_path / "sub" / "grid.png", ["invert", "flip"], scale=2)
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (3 * 18 + 2, 3 * 18 + 2, 3)
    first, inverted = pixels[2:18, 2:18, 0], pixels[2:18, 20:36, 0]
    assert np.abs(first.astype(int) + inverted.astype(int) - 255).max() <= 1
