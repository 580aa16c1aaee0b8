"""The denoising-autoencoder detector: coarse noise, standardisation, residual polarity, and that a
briefly trained DAE localises the synthetic phantoms' lesions better than their brightness does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medad.data.synthetic import make_phantoms
from medad.detectors.dae import DAEDetector, coarse_noise, residual_map, standardize
from medad.detectors.maps import foreground_mask
from medad.detectors.registry import build_detector
from medad.models.unet import UNet

from tolerance import tolerance  # tests/ is on sys.path


def test_coarse_noise_is_smooth_at_the_grid_scale() -> None:
    noise = coarse_noise(torch.Size([64, 1, 32, 32]), res=4, std=0.5, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (64, 1, 32, 32)
    neighbours = torch.corrcoef(torch.stack([noise[..., :, :-1].flatten(), noise[..., :, 1:].flatten()]))[0, 1]
    assert neighbours > 0.95  # blobs of about 8 px, not pixel noise
    assert 0.2 < noise.std() < 0.5


def test_standardize_zero_mean_unit_std_inside_the_foreground() -> None:
    x = torch.rand(3, 2, 16, 16) * 0.5 + 0.2
    fg = torch.zeros(3, 16, 16, dtype=torch.bool)
    fg[:, 4:12, 2:14] = True
    z = standardize(x, fg)
    inside = z[:, :, fg[0]]
    # μ is a float32 sum over the 16 x 16 masked pixels; in units of σ its terms add up to mean|x| / σ
    # (about 3.4): atol 1e-4, where standardising over the whole image would leave a mean of 0.04-0.2
    scale = float((x.abs().mean((2, 3)) / x[:, :, fg[0]].std(-1, unbiased=False)).max())
    assert torch.allclose(inside.mean(-1), torch.zeros(3, 2), atol=tolerance(torch.float32, 16 * 16, scale)["atol"])
    assert torch.allclose(inside.std(-1, unbiased=False), torch.ones(3, 2), atol=1e-4)
    scale = x[:, :, fg[0]].std(-1, unbiased=False)
    assert torch.allclose(z[:, :, 0, 0] - z[:, :, 8, 8], (x[:, :, 0, 0] - x[:, :, 8, 8]) / scale, atol=1e-4)


def test_residual_map_channels_and_polarity() -> None:
    x = torch.zeros(1, 3, 2, 2)
    restored = torch.zeros(1, 3, 2, 2)
    x[0, 1, 0, 0], x[0, 0, 1, 1] = 1.0, -1.0
    assert residual_map(x, restored, "bright", [1])[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert residual_map(x, restored, "dark", None)[0, 1, 1] == pytest.approx(1 / 3)
    assert residual_map(x, restored, "abs", None)[0].sum() == pytest.approx(2 / 3)


def test_unet_refuses_sides_it_cannot_halve() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet(1, widths=(4, 8, 16))(torch.rand(1, 1, 18, 18))


def test_bad_settings_are_refused_at_fit() -> None:
    with pytest.raises(ValueError, match="map_channels"):
        DAEDetector(map_channels=[2], epochs=1).fit(torch.rand(4, 1, 16, 16), None)
    with pytest.raises(ValueError, match="multiple of 8"):
        DAEDetector(epochs=1).fit(torch.rand(4, 1, 20, 20), None)


@pytest.fixture(scope="module")
def phantoms():
    normals, _ = make_phantoms(96, 32, seed=0)
    lesions, masks = make_phantoms(24, 32, seed=1, lesion=True)
    return normals, lesions, masks


@pytest.fixture(scope="module")
def trained(phantoms) -> DAEDetector:
    normals, _, _ = phantoms
    torch.manual_seed(0)
    return DAEDetector(epochs=25, batch_size=16, widths=(8, 16, 32), noise_res=8, noise_std=0.3).fit(normals, None)


def test_trained_dae_localises_phantom_lesions_better_than_brightness(trained, phantoms) -> None:
    _, lesions, masks = phantoms
    out = trained.score(lesions, None)
    y = masks[:, 0].flatten().numpy()
    inside = foreground_mask(lesions, 0.1).flatten().numpy()
    dae = roc_auc_score(y[inside], out.maps.flatten().numpy()[inside])
    # the trivial map: distance of each pixel from its image's foreground mean (two-sided, as the lesions are)
    z = standardize(lesions, foreground_mask(lesions, 0.1)).abs()[:, 0].flatten().numpy()
    brightness = roc_auc_score(y[inside], z[inside])
    assert dae > 0.85 and dae > brightness + 0.1, (dae, brightness)


def test_saved_dae_gives_the_same_maps(trained, phantoms) -> None:
    _, lesions, _ = phantoms
    again = build_detector("dae", trained.params.model_dump())
    again.load_state_dict(trained.state_dict())
    np.testing.assert_allclose(again.score(lesions, None).maps, trained.score(lesions, None).maps, atol=1e-6)


def test_intensity_detector_is_the_standardised_image_with_its_polarity(phantoms) -> None:
    _, lesions, _ = phantoms
    z = standardize(lesions, foreground_mask(lesions, 0.1))[:, 0]
    for polarity, expected in (("signed", z), ("bright", z.clamp_min(0)), ("abs", z.abs())):
        out = build_detector("intensity", {"polarity": polarity}).fit(lesions, None).score(lesions, None)
        assert torch.allclose(out.maps, expected, atol=1e-5)
        assert torch.allclose(out.scores, expected.flatten(1).amax(1).double(), atol=1e-5)
    with pytest.raises(ValueError, match="map_channels"):
        build_detector("intensity", {"map_channels": [1]}).fit(lesions, None)


def test_work_size_trains_small_and_maps_at_the_input_size(phantoms) -> None:
    normals, lesions, _ = phantoms
    det = DAEDetector(epochs=1, batch_size=16, widths=(4, 8), noise_res=4, work_size=16).fit(normals, None)
    out = det.score(lesions, None)
    assert out.maps.shape == (len(lesions), 32, 32)
    assert (out.maps[~foreground_mask(lesions, 0.1)] == 0).all()
    with pytest.raises(ValueError, match="work_size"):
        DAEDetector(epochs=1, widths=(4, 8, 16), work_size=18).fit(normals, None)
