"""MedMix: exactly n pasted lesions with their masks, plain copies when alterations are off,
alterations applied with their probability, class assignment and the example grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medad.augment.medmix import MedMix, lesion_classes, save_medmix_grid
from medad.data.synthetic import make_phantoms

PLAIN = {"jitter_p": 0.0, "noise_p": 0.0, "fisheye_p": 0.0, "wave_p": 0.0}
EIGHT_CONNECTED = np.ones((3, 3), dtype=int)




def _constant_images(n: int, size: int) -> torch.Tensor:
    """Image i is the constant (i + 1) / (n + 1): a pasted pixel differs from its image."""
    return ((torch.arange(n) + 1.0) / (n + 1)).view(n, 1, 1, 1).expand(n, 1, size, size).clone()


def _coordinate_images(n: int, size: int) -> torch.Tensor:
    """Channels: row / size, column / size and image index / n, so a pixel tells where it came from."""
    rows = torch.arange(size).view(1, size, 1).expand(n, size, size) / size
    cols = torch.arange(size).view(1, 1, size).expand(n, size, size) / size
    index = (torch.arange(n) / n).view(n, 1, 1).expand(n, size, size)
    return torch.stack([rows, cols, index], dim=1).float()


def _smooth_images(n: int, size: int) -> torch.Tensor:
    """Images in [0.2, 0.8] varying in both directions, so every alteration changes a patch."""
    t = torch.linspace(0, 6.28, size)
    phase = torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(0)) * 6.28
    return 0.5 + 0.15 * torch.sin(t.view(1, 1, size, 1) + phase) + 0.15 * torch.cos(1.7 * t.view(1, 1, 1, size))


@pytest.mark.parametrize(("max_lesions", "size"), [(3, 32), (5, 40)])
def test_exactly_n_regions_whose_mask_is_the_changed_pixels(max_lesions: int, size: int) -> None:
    n = 12
    images = _constant_images(n, size)
    counts = torch.arange(n) % (max_lesions + 1)
    mix = MedMix(max_lesions=max_lesions, **PLAIN)
    out, masks = mix(images, counts, generator=torch.Generator().manual_seed(1))
    assert masks.shape == (n, 1, size, size) and masks.dtype == torch.uint8
    changed = (out - images).abs() > 1e-6
    assert torch.equal(changed, masks.bool())
    for i in range(n):
        labels, regions = ndimage.label(masks[i, 0].numpy(), structure=EIGHT_CONNECTED)
        assert regions == counts[i]
        for r in range(1, regions + 1):
            values = out[i, 0].numpy()[labels == r]
            assert np.ptp(values) < 1e-6  # one source image per lesion
            assert abs(values[0] - images[i, 0, 0, 0].item()) > 1e-6  # never cut from the target itself


def test_without_alterations_a_lesion_is_a_translated_copy_of_a_patch_inside_the_image() -> None:
    n, size = 16, 32
    images = _coordinate_images(n, size)
    out, masks = MedMix(size=(0.15, 0.25), **PLAIN)(images, torch.full((n,), 3), torch.Generator().manual_seed(2))
    lo, hi = round(0.15 * size), round(0.25 * size)
    for i in range(n):
        labels, regions = ndimage.label(masks[i, 0].numpy(), structure=EIGHT_CONNECTED)
        assert regions == 3
        for box in ndimage.find_objects(labels):
            region = out[i, :, box[0], box[1]]
            rows, cols = torch.meshgrid(torch.arange(size)[box[0]], torch.arange(size)[box[1]], indexing="ij")
            shift_r = region[0] * size - rows
            shift_c = region[1] * size - cols
            assert shift_r.max() - shift_r.min() < 1e-4 and shift_c.max() - shift_c.min() < 1e-4
            assert region[2].max() - region[2].min() < 1e-6 and region[2, 0, 0] * n != i
            assert lo <= region.shape[1] <= hi and lo <= region.shape[2] <= hi
        assert torch.equal(out[i][:, masks[i, 0] == 0], images[i][:, masks[i, 0] == 0])


@pytest.mark.parametrize("alteration", ["jitter_p", "noise_p", "fisheye_p", "wave_p"])
def test_each_alteration_is_applied_with_its_probability(alteration: str) -> None:
    n = 200
    images = _smooth_images(n, 24)
    counts = torch.ones(n, dtype=torch.long)

    def run(p: float) -> torch.Tensor:
        out, masks = MedMix(**{**PLAIN, alteration: p})(images, counts, torch.Generator().manual_seed(3))
        return out, masks

    plain, masks = run(0.0)
    for p in (0.25, 1.0):
        out, same_masks = run(p)
        assert torch.equal(masks, same_masks)  # the geometry does not depend on the probabilities
        assert torch.equal(out[masks.expand_as(out) == 0], images[masks.expand_as(out) == 0])
        altered = ((out - plain).abs().flatten(1) > 1e-4).any(dim=1).float().mean().item()
        assert abs(altered - p) < 0.1, (alteration, p, altered)


def test_same_generator_same_result_and_clear_errors() -> None:
    images = torch.rand(4, 1, 32, 32)
    counts = torch.tensor([3, 2, 1, 0])
    a = MedMix()(images, counts, torch.Generator().manual_seed(5))
    b = MedMix()(images, counts, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][3], images[3]) and not a[1][3].any()
    with pytest.raises(ValueError, match="0..3"):
        MedMix()(images, torch.tensor([4, 0, 0, 0]))
    with pytest.raises(ValueError, match="at least 2 images"):
        MedMix()(images[:1], torch.tensor([1]))
    with pytest.raises(ValueError, match="at least 8 px"):
        MedMix()(torch.rand(2, 1, 6, 6), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="entries"):
        MedMix()(images, torch.tensor([1, 1]))


@pytest.mark.parametrize(("n", "k"), [(3, 4), (8, 4), (10, 4), (7, 5)])
def test_lesion_classes_are_balanced(n: int, k: int) -> None:
    for seed in range(5):
        classes = lesion_classes(n, k, torch.Generator().manual_seed(seed))
        counts = torch.bincount(classes, minlength=k)
        assert len(classes) == n and len(counts) == k and counts.max() - counts.min() <= 1


def test_grid_png_is_small_and_shaped_rows_by_columns(tmp_path) -> None:
    images = make_phantoms(3, 32, seed=0)[0]
    path = save_medmix_grid(images, tmp_path / "sub" / "grid.png", seed=0, columns=4, scale=2)
    with Image.open(path) as png:
        assert png.size == (4 * (64 + 2) + 2, 3 * (64 + 2) + 2) and png.mode == "RGB"
        array = np.asarray(png)
    red = (array[..., 0] > 200) & (array[..., 1] < 60)
    assert not red[:, : 64 + 2].any() and red[:, 64 + 2 :].any()  # outlines only in the lesion columns
    assert path.stat().st_size < 200_000


def _disc_images(n: int, size: int) -> torch.Tensor:
    """A bright textured disc (radius size/3) on a black background: the LGG-like case."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    texture = 0.4 + 0.4 * torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    return texture * disc


def test_foreground_cuts_from_and_pastes_into_the_foreground_only() -> None:
    n, size = 32, 48
    images = _disc_images(n, size)
    counts = torch.full((n,), 3)
    fg = images[:, 0] > 0
    plain_out, plain_masks = MedMix(**PLAIN)(images, counts, torch.Generator().manual_seed(1))
    out, masks = MedMix(**PLAIN, foreground=0.1)(images, counts, torch.Generator().manual_seed(1))
    assert not (masks[:, 0].bool() & ~fg).any()  # nothing pasted onto the background
    assert (plain_masks[:, 0].bool() & ~fg).any()  # the paper's MedMix does paste there
    # cut from tissue: far fewer black pixels inside the lesions than without the option
    black = float((out[masks.bool()] == 0).float().mean())
    black_plain = float((plain_out[plain_masks.bool()] == 0).float().mean())
    assert black < 0.5 * black_plain
    assert torch.equal(out[~masks.bool()], images[~masks.bool()])


def test_feather_blends_the_border_and_keeps_the_centre() -> None:
    n, size = 8, 32
    images = _constant_images(n, size)
    counts = torch.ones(n, dtype=torch.long)
    hard, masks = MedMix(**PLAIN)(images, counts, torch.Generator().manual_seed(4))
    soft, soft_masks = MedMix(**PLAIN, feather=0.5)(images, counts, torch.Generator().manual_seed(4))
    assert torch.equal(masks, soft_masks)  # same geometry, same mask
    inside = masks.bool()
    mixed = (soft - images).abs() / (hard - images).abs().clamp_min(1e-9)  # 1 = fully the lesion

    def eroded(iterations: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([ndimage.binary_erosion(m[0], iterations=iterations)[None]
                                          for m in inside.numpy()]))

    centre = eroded(3)
    assert centre.any() and torch.allclose(mixed[centre], torch.ones(()), atol=1e-5)
    edge = inside & ~eroded(1)
    assert (mixed[edge] < 0.99).all() and (mixed[edge] > 0).all() and mixed[edge].mean() < 0.6
    with pytest.raises(ValueError, match="feather"):
        MedMix(feather=2.0)
