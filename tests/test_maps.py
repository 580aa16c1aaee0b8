"""Map post-processing: the label-free foreground, erosion and blur in px at 256 px, and the model
applying them to every spatial score (maps, image scores and the pixel threshold agree)."""

from __future__ import annotations

import pytest
import torch

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.maps import foreground_mask, postprocess_maps, reduce_maps, smooth_maps
from medad.detectors.registry import DETECTORS


def _ring(size: int) -> torch.Tensor:
    """A bright ring (a head with dark ventricles inside) on a black background: [1, 1, S, S]."""
    ax = torch.linspace(-1, 1, size)
    r = (ax[:, None] ** 2 + ax[None, :] ** 2).sqrt()
    return ((r < 0.8) & (r > 0.3)).float().mul(0.7).view(1, 1, size, size)


def test_foreground_fills_holes_and_ignores_black_background() -> None:
    x = _ring(64)
    fg = foreground_mask(x, threshold=0.1)[0]
    assert fg[32, 32] and not fg[0, 0]  # the dark centre is inside the head
    assert fg.sum() == ((x[0, 0] > 0).sum() + (torch.linspace(-1, 1, 64).pow(2).view(1, -1)
                                              + torch.linspace(-1, 1, 64).pow(2).view(-1, 1) <= 0.09).sum())


def test_foreground_on_chosen_channels_and_a_clear_error_for_missing_ones() -> None:
    x = torch.cat([_ring(32), torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)], dim=1)
    assert foreground_mask(x, 0.1, channels=[0]).sum() < foreground_mask(x, 0.1).sum()
    assert not foreground_mask(x, 0.1, channels=[1]).any()
    with pytest.raises(ValueError, match="channels \\[3\\] do not exist"):
        foreground_mask(x, 0.1, channels=[3])


def test_foreground_threshold_is_relative_to_each_image() -> None:
    x = _ring(32)
    assert torch.equal(foreground_mask(x * 0.05, 0.1), foreground_mask(x, 0.1))  # a dim 16-bit scan


def test_erosion_is_the_same_fraction_of_the_image_at_any_size() -> None:
    shares = [foreground_mask(_ring(s), 0.1, erode=16)[0].float().mean() for s in (64, 128)]
    assert shares[0] < foreground_mask(_ring(64), 0.1)[0].float().mean()
    assert shares[0] == pytest.approx(float(shares[1]), abs=0.02)


def test_smoothing_keeps_shape_and_mass() -> None:
    maps = torch.zeros(2, 32, 32)
    maps[:, 16, 16] = 1.0
    out = smooth_maps(maps, (32, 32), sigma=16.0)
    assert out.shape == maps.shape and out[0, 16, 16] < 0.5
    assert out.sum((1, 2)) == pytest.approx(torch.ones(2), abs=1e-4)


def test_postprocess_zeroes_the_background_and_reduce_reads_the_result() -> None:
    x = _ring(32)
    maps = torch.ones(1, 32, 32)
    maps[0, 0, 0] = 10.0  # a hot corner outside the head
    out = postprocess_maps(x, maps, foreground=0.1)
    assert out[0, 0, 0] == 0 and reduce_maps(out, "max").item() == 1.0


def test_model_applies_maps_settings_to_scores_maps_and_threshold() -> None:
    normals, _ = make_phantoms(24, 32, seed=0)
    lesions, _ = make_phantoms(4, 32, seed=1, lesion=True)
    base = {"data": {"image_size": 32}, "method": {"name": "none"}, "train": {"progress": False},
            "detector": {"name": "dae", "params": {"epochs": 1, "widths": [4, 8], "batch_size": 8}}}
    plain = AnomalyDetector(RunConfig.model_validate(base)).fit(normals)
    masked = AnomalyDetector(RunConfig.model_validate(
        {**base, "maps": {"foreground": 0.1, "erode": 32, "smooth": 8, "reduction": "mean"}})).fit(normals)
    out = masked.score_all(lesions)["dae"]
    background = ~foreground_mask(lesions, 0.1, erode=32)
    far = background & ~foreground_mask(lesions, 0.1)  # outside the head, beyond the blur's reach of it
    far = far & (torch.nn.functional.max_pool2d((~background).float()[:, None], 13, 1, 6)[:, 0] == 0)
    assert far.any() and (out.maps[far] < 1e-6).all()
    assert out.maps[background].mean() < out.maps[~background].mean()
    assert torch.allclose(out.scores, out.maps.flatten(1).mean(1).double())
    assert not torch.equal(out.maps, plain.score_all(lesions)["dae"].maps)
    assert masked.pixel_threshold_ != plain.pixel_threshold_


def test_every_spatial_detector_names_the_reduction_of_a_postprocessed_map() -> None:
    spatial = [name for name, cls in DETECTORS.items() if cls.spatial]
    assert "patchcore" in spatial and "padim" in spatial
    assert all("reduction" in DETECTORS[name].Params.model_fields for name in spatial)


def test_patchcore_scores_the_postprocessed_map() -> None:
    normals, _ = make_phantoms(12, 32, seed=0)
    lesions, _ = make_phantoms(3, 32, seed=1, lesion=True)
    config = RunConfig.model_validate({"data": {"image_size": 32}, "method": {"name": "none"}, "encoder": {"width": 8},
                                       "train": {"progress": False}, "detector": {"name": "patchcore", "also": []},
                                       "maps": {"foreground": 0.1, "erode": 16}})
    out = AnomalyDetector(config).fit(normals).score_all(lesions)["patchcore"]
    assert torch.allclose(out.scores, out.maps.flatten(1).max(1).values.double())
    assert (out.maps[~foreground_mask(lesions, 0.1, erode=16)] == 0).all()
