"""The autoencoder detectors ae / memae / ae_u / msssim_ae: losses, maps, patches, fit/score, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medad.detectors.autoencoders import (
    AEUDetector,
    MSSSIMAEDetector,
    aeu_loss,
    attention_entropy,
    local_patch_size,
    memae_loss,
    msssim_error_map,
    normalized_error_map,
    squared_error_map,
)
from medad.detectors.patches import assemble_patches, extract_patches, patch_positions, random_patches
from medad.detectors.registry import DETECTORS, applicable_detectors, build_detector
from medad.models.autoencoder import AEOutput, MemoryModule
from tolerance import tolerance

NAMES = ["ae", "memae", "ae_u", "msssim_ae"]


def _blobs(n: int, seed: int, size: int = 32) -> Tensor:
    """Smooth normal images: one Gaussian blob of random centre and width on a grey background."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(-1, 1, size)
    c = torch.rand(n, 2, generator=g) * 0.8 - 0.4
    r = 0.3 + 0.2 * torch.rand(n, 1, 1, generator=g)
    d2 = (ax[None, :, None] - c[:, 0, None, None]) ** 2 + (ax[None, None, :] - c[:, 1, None, None]) ** 2
    x = 0.2 + 0.5 * torch.exp(-d2 / (2 * r**2)) + 0.01 * torch.randn(n, size, size, generator=g)
    return x.unsqueeze(1).clamp(0, 1)


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor, Tensor]:
    normals, test = _blobs(32, 0), _blobs(6, 1)
    odd = test.clone()
    odd[:, :, 6:14, 18:26] = 0.95  # a bright square
    return normals, test, odd


# -- losses and maps ----------------------------------------------------------------------------


def test_aeu_loss_is_minimal_at_variance_equal_to_squared_error() -> None:
    x = torch.tensor([[[[0.2, 0.9], [0.5, 0.0]]]])
    rec = torch.tensor([[[[0.5, 0.4], [0.45, 0.1]]]])
    err2 = (x - rec) ** 2
    for floor in (0.0, 1e-3):
        best = torch.log(err2 - floor)  # σ² = exp(log_var) + floor = e²
        log_var = best.clone().requires_grad_(True)
        aeu_loss(x, rec, log_var, floor).backward()
        assert log_var.grad.abs().max() < 1e-6
        # numerically: any shift of log σ² at any pixel raises the loss
        at_best = aeu_loss(x, rec, best, floor)
        for delta in (-0.5, -0.05, 0.05, 0.5):
            for p in range(4):
                moved = best.clone()
                moved.view(-1)[p] += delta
                assert aeu_loss(x, rec, moved, floor) > at_best
    # the value: mean of e²/σ² + log σ² = mean(1 + log e²) at the minimum (no floor)
    assert torch.isclose(aeu_loss(x, rec, torch.log(err2)), (1 + torch.log(err2)).mean())


def test_maps_on_hand_made_inputs() -> None:
    x = torch.zeros(1, 2, 2, 2)
    rec = torch.stack([torch.full((2, 2), 0.1), torch.full((2, 2), 0.3)])[None]
    assert torch.allclose(squared_error_map(x, rec), torch.full((1, 2, 2), (0.01 + 0.09) / 2))
    log_var = torch.log(torch.full_like(x, 0.01))
    assert torch.allclose(normalized_error_map(x, rec, log_var, 0.0), torch.full((1, 2, 2), (1 + 9) / 2))
    # the floor bounds the normalised error where the predicted variance vanishes
    tiny = torch.full_like(x, -50.0)
    assert normalized_error_map(x, rec, tiny, 1e-3).max() <= 0.09 / 1e-3 + 1e-3
    y = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert msssim_error_map(y, y).abs().max() < 1e-5
    assert msssim_error_map(y, 1 - y).mean() > 0.5


def test_attention_entropy_and_memae_loss() -> None:
    one_hot = torch.eye(5)[[1, 3]]
    assert attention_entropy(one_hot).item() == 0.0
    assert math.isclose(attention_entropy(torch.full((3, 4), 0.25)).item(), math.log(4), rel_tol=1e-6)
    w = torch.tensor([[0.0, 0.7, 0.3]], requires_grad=True)  # zeros from hard shrinkage: finite gradient
    attention_entropy(w).backward()
    assert torch.isfinite(w.grad).all()
    x, rec = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    att = torch.full((2, 4), 0.25)
    assert torch.isclose(memae_loss(x, AEOutput(rec, None, att), 0.1), torch.tensor(0.25 + 0.1 * math.log(4)))
    assert torch.isclose(memae_loss(x, AEOutput(rec, None, att), 0.0), torch.tensor(0.25))


def test_memae_hard_shrinkage_zeroes_small_weights_and_renormalises() -> None:
    torch.manual_seed(0)
    memory = MemoryModule(items=4, dim=3, shrink=0.25)
    z = torch.randn(6, 3)
    dense = torch.softmax(F.normalize(z, dim=1) @ F.normalize(memory.memory, dim=1).T, dim=1)
    _, w = memory(z)
    assert torch.allclose(w.sum(1), torch.ones(6))
    assert (w[dense < 0.25] == 0).all() and (w[dense > 0.25] > 0).all()
    kept = dense * (dense > 0.25)
    assert torch.allclose(w, kept / kept.sum(1, keepdim=True), atol=1e-5)  # the kept weights keep their ratios
    assert (dense < 0.25).any()  # the check above was not vacuous


# -- patches of the local model -----------------------------------------------------------------


@pytest.mark.parametrize("size,patch,stride", [(32, 16, 8), (32, 16, 16), (48, 16, 12), (64, 32, 5), (16, 16, 8)])
def test_patch_tiling_and_assembly_reproduce_the_image(size: int, patch: int, stride: int) -> None:
    x = torch.rand(3, 2, size, size, generator=torch.Generator().manual_seed(size + stride))
    patches = extract_patches(x, patch, stride)
    n = len(patch_positions(size, patch, stride))
    assert patches.shape == (3 * n * n, 2, patch, patch)
    # identity map → the image, up to rounding of the float32 mean of the k equal overlapping
    # values in [0, 1) (k - 1 additions and a division; k up to 49 here, at most (⌈patch/stride⌉ + 1)²)
    atol = tolerance(torch.float32, terms=(math.ceil(patch / stride) + 1) ** 2)["atol"]
    assert torch.allclose(assemble_patches(patches, size, stride), x, rtol=0, atol=atol)
    assert torch.allclose(assemble_patches(patches[:, 0], size, stride), x[:, 0], rtol=0, atol=atol)
    # overlaps are averaged: a map of ones per patch stays ones
    ones = assemble_patches(torch.ones(3 * n * n, patch, patch), size, stride)
    assert torch.equal(ones, torch.ones(3, size, size))
    # patches are image-major: patch 0 of image 1 is its top-left corner
    assert torch.equal(patches[n * n], x[1, :, :patch, :patch])


def test_patch_sizes_and_random_crops() -> None:
    assert patch_positions(32, 16, 8) == [0, 8, 16] and patch_positions(40, 16, 16) == [0, 16, 24]
    assert [local_patch_size(s, 32) for s in (16, 32, 48, 64, 256)] == [None, 16, 16, 32, 32]
    with pytest.raises(ValueError):
        patch_positions(16, 32, 8)
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)
    crops = random_patches(x, 16, 3, torch.Generator().manual_seed(0))
    again = random_patches(x, 16, 3, torch.Generator().manual_seed(0))
    assert crops.shape == (6, 1, 16, 16) and torch.equal(crops, again)
    assert (crops[:3] < 1024).all() and (crops[3:] >= 1024).all()  # 3 crops of each image, in order
    assert (crops[:, :, :, 1:] - crops[:, :, :, :-1] == 1).all()  # contiguous windows


# -- detectors ----------------------------------------------------------------------------------


def test_registered_and_scored_alone() -> None:
    for name in NAMES:
        assert DETECTORS[name].name == name and not DETECTORS[name].needs_encoder and DETECTORS[name].spatial
        assert applicable_detectors(name) == [name]
    det = build_detector("memae", {"memory": 20, "latent": 8, "hidden": 64})
    assert det.params.shrink is None and det.params.entropy_weight == 0.0002 and det.params.lr == 5e-4
    assert build_detector("msssim_ae").params.patch_size == 32


@pytest.mark.parametrize("name", NAMES)
def test_detector_fits_scores_anomaly_higher_and_round_trips(name: str, data) -> None:
    normals, test, odd = data
    params = {"epochs": 8, "batch_size": 8, "lr": 5e-3, "hidden": 128}
    det = build_detector(name, params).fit(normals, None)
    x = torch.cat([test, odd])
    out = det.score(x, None)
    assert out.maps.shape == (12, 32, 32) and out.scores.shape == (12,) and torch.isfinite(out.maps).all()
    if name == "msssim_ae":
        # 1 − MS-SSIM barely penalises a flat square (its structure term is high on flat regions)
        # and 8 epochs from scratch leave normal scores spread: every image scores higher with the
        # square than without it (margin >= 0.08 over training and data seeds), though not always
        # above every other normal image
        assert (out.scores[6:] > out.scores[:6]).all()
    else:
        assert out.scores[6:].min() > out.scores[:6].max()  # the bright square reconstructs worse
    assert torch.allclose(out.scores.float(), out.maps.flatten(1).mean(1))
    # the map is brightest inside the square
    diff = out.maps[6:] - out.maps[:6]
    assert diff[:, 6:14, 18:26].mean() > 3 * diff[:, 20:, :10].abs().mean()

    fresh = build_detector(name, params)
    fresh.load_state_dict(det.state_dict())
    assert torch.equal(fresh.score(x, None).scores, out.scores)
    assert torch.equal(fresh.score(x, None).maps, out.maps)

    det.params.reduction = "max"
    assert torch.allclose(det.score(x, None).scores.float(), out.maps.flatten(1).amax(1))


def test_msssim_ae_global_plus_local_and_small_images(data) -> None:
    normals, test, _ = data
    det = MSSSIMAEDetector(epochs=1, batch_size=8, hidden=32, patches_per_image=2).fit(normals, None)
    assert det.patch == 16 and det.stride == 8 and det.local is not None
    with torch.no_grad():
        expected = msssim_error_map(test, det.net(test).reconstruction) + det.local_map(test)
        assert torch.allclose(det.anomaly_map(test), expected)
    assert "local.encoder.0.0.weight" in det.state_dict()
    small = MSSSIMAEDetector(epochs=1, batch_size=8, hidden=32).fit(F.avg_pool2d(normals, 2), None)
    assert small.local is None and small.score(F.avg_pool2d(test, 2), None).maps.shape == (6, 16, 16)


def test_aeu_squared_map_option_and_fit_is_seeded(data) -> None:
    normals, test, _ = data
    a = AEUDetector(epochs=1, batch_size=8, hidden=32, score_map="squared").fit(normals, None)
    b = AEUDetector(epochs=1, batch_size=8, hidden=32, score_map="squared").fit(normals, None)
    assert torch.equal(a.score(test, None).scores, b.score(test, None).scores)
    with torch.no_grad():
        out = a.net(test)
    assert out.log_var is not None
    assert torch.allclose(a.score(test, None).maps, squared_error_map(test, out.reconstruction))
