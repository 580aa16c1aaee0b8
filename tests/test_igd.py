"""IGD: the pure loss / score functions, tiny end-to-end fits and save/load (API: test_reconstruction_pipeline.py)."""

from __future__ import annotations

import pytest
import torch

from medad.data.synthetic import make_phantoms
from medad.detectors.igd import (
    IGDDetector, acai_critic_loss, acai_interpolate, acai_target, estimate_gaussian, gaussian_anomaly,
    gaussian_from_moments, igd_score, reconstruction_loss, reconstruction_map,
)
from medad.detectors.patches import patch_positions
from medad.detectors.registry import build_detector
from medad.models.resnet import ResNetEncoder

from toys import TINY_DETECTOR_PARAMS  # tests/ is on sys.path

TINY = TINY_DETECTOR_PARAMS["igd"]


def test_gaussian_classifier_is_zero_at_the_mean_and_tends_to_one() -> None:
    mu = torch.tensor([1.0, -2.0, 0.5])
    z = torch.stack([mu, mu + 0.1, mu + 1.0, mu + 100.0])
    h = gaussian_anomaly(z, mu, torch.tensor(2.0))
    assert h[0] == 0 and (h.diff() > 0).all() and h[-1] > 1 - 1e-6
    assert torch.isclose(h[2], 1 - torch.exp(torch.tensor(-3.0 / 2.0)))


def test_gaussian_estimate_and_streamed_moments_agree() -> None:
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3 + 7
    mu, s2 = estimate_gaussian(z, kappa=0.5)
    assert torch.allclose(mu, z.mean(0), atol=1e-5)
    assert torch.isclose(s2, 0.5 * (z - z.mean(0)).pow(2).sum(1).mean(), rtol=1e-4)
    z64 = z.double()
    parts = [z64[:20], z64[20:]]
    mu2, s22 = gaussian_from_moments(50, sum(p.sum(0) for p in parts), sum(p.pow(2).sum() for p in parts), 0.5)
    assert torch.allclose(mu2.float(), mu) and torch.isclose(s22.float(), s2)
    assert float(estimate_gaussian(torch.ones(3, 2))[1]) > 0  # floored, never a division by zero


def test_acai_interpolation_and_critic_target() -> None:
    z = torch.arange(6.0).view(3, 2)
    assert torch.equal(acai_interpolate(z, torch.ones(3, 1)), z)
    assert torch.equal(acai_interpolate(z, torch.zeros(3, 1)), z.flip(0))
    half = acai_interpolate(z, torch.full((3, 1), 0.5))
    assert torch.equal(half, (z + z.flip(0)) / 2)
    alpha = torch.tensor([0.0, 0.1, 0.4, 0.5, 0.9, 1.0])
    assert torch.allclose(acai_target(alpha), torch.tensor([0.0, 0.1, 0.4, 0.5, 0.1, 0.0]))
    # a perfect critic: α on the mixtures, 0 on the (near-)real images
    assert acai_critic_loss(acai_target(alpha), alpha, torch.zeros(6)) == 0
    assert torch.isclose(acai_critic_loss(torch.zeros(2), torch.tensor([0.5, 0.5]), torch.ones(2)), torch.tensor(1.25))


def test_reconstruction_terms_and_score() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g)
    assert torch.allclose(reconstruction_loss(x, x, 0.15), torch.zeros(2), atol=1e-5)
    assert torch.allclose(reconstruction_map(x, x, 0.15), torch.zeros(2, 16, 16), atol=1e-5)
    noisy = (x + 0.3 * torch.rand(2, 1, 16, 16, generator=g)).clamp(0, 1)
    assert (reconstruction_loss(x, noisy, 0.15) > 0.05).all()
    assert torch.allclose(reconstruction_loss(x, noisy, 1.0), (x - noisy).abs().flatten(1).mean(1))
    assert igd_score(torch.tensor(0.2), torch.tensor(0.8), 0.25) == pytest.approx(0.65)
    assert patch_positions(16, 8, 4) == [0, 4, 8] and patch_positions(28, 14, 7) == [0, 7, 14]


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    encoder = ResNetEncoder(1, 8, "cifar").eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    normals, _ = make_phantoms(8, 32, seed=0)
    det = IGDDetector(**TINY).fit(normals, encoder)
    return det, encoder, before


def test_fit_gives_maps_and_finite_scores(fitted) -> None:
    det, encoder, _ = fitted
    test, _ = make_phantoms(3, 32, seed=1, lesion=True)
    out = det.score(test, encoder)
    assert out.maps.shape == (3, 32, 32) and out.scores.shape == (3,)
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.maps).all()
    assert torch.allclose(out.scores.float(), out.maps.flatten(1).mean(1))
    assert det.local_model is not None and det.local_patch(32) == 16  # half of a 32 px image
    assert det.global_model.mu.shape == (64,) and float(det.global_model.sigma2) > 0
    # maps = global + local, each ξ·ℓ_rec + (1 − ξ)·h ≥ 0
    assert (out.maps >= -1e-6).all()


def test_medad_encoder_is_copied_not_modified(fitted) -> None:
    det, encoder, before = fitted
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not encoder.training and all(p.requires_grad for p in encoder.parameters())
    assert det.global_model.encoder is not encoder
    # with a vanishing learning rate the fine-tuned copies keep the medad weights
    normals, _ = make_phantoms(4, 32, seed=0)
    still = IGDDetector(**{**TINY, "lr": 1e-12}).fit(normals, encoder)
    for model in (still.global_model, still.local_model):
        for name, p in model.encoder.named_parameters():
            assert torch.allclose(p, dict(encoder.named_parameters())[name], atol=1e-6), name


def test_save_load_through_the_registry(fitted) -> None:
    det, encoder, _ = fitted
    test, _ = make_phantoms(3, 32, seed=2, lesion=True)
    fresh = build_detector("igd", TINY)
    fresh.load_state_dict(det.state_dict())
    assert fresh.backbone_spec.tolist() == det.backbone_spec.tolist()
    assert torch.allclose(fresh.score(test, None).scores, det.score(test, encoder).scores, atol=1e-6)


def test_without_encoder_and_global_only() -> None:
    normals = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    det = IGDDetector(**TINY, local=False, width=4).fit(normals, None)
    assert det.local_model is None and det.global_model.encoder.width == 4
    assert det.score(normals[:2], None).maps.shape == (2, 16, 16)
    assert IGDDetector(**TINY).local_patch(16) == 8 and IGDDetector(**TINY).local_patch(12) == 0

