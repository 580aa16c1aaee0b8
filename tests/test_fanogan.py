"""f-AnoGAN: gradient penalty, izi_f loss/map, tiny fits and save/load (API: test_reconstruction_pipeline.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medad.data.synthetic import make_phantoms
from medad.detectors.fanogan import FAnoGANDetector, fanogan_map, izi_f_loss
from medad.detectors.registry import build_detector
from medad.models.gan import (
    ConvEncoder, Critic, LatentEncoder, gradient_penalty, wgan_critic_loss, wgan_generator_loss,
)
from medad.models.resnet import ResNetEncoder

from tolerance import tolerance  # tests/ is on sys.path
from toys import TINY_DETECTOR_PARAMS

TINY = TINY_DETECTOR_PARAMS["fanogan"]


def _linear_critic(weight: torch.Tensor):
    return lambda x: x.flatten(1) @ weight


def _gp(critic, real: torch.Tensor, fake: torch.Tensor) -> float:
    return float(gradient_penalty(critic, real, fake).detach())


def test_gradient_penalty_zero_for_unit_gradient_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 1, 4, 4, generator=g), torch.rand(6, 1, 4, 4, generator=g)
    unit = torch.randn(16, generator=g)
    unit = unit / unit.norm()
    assert _gp(_linear_critic(unit), real, fake) == pytest.approx(0.0, abs=1e-10)
    assert _gp(_linear_critic(3 * unit), real, fake) == pytest.approx(4.0, rel=1e-5)
    assert _gp(_linear_critic(0 * unit), real, fake) == pytest.approx(1.0)
    quadratic = lambda x: x.pow(2).flatten(1).sum(1)  # noqa: E731 — gradient 2x̂, norm varies
    assert _gp(quadratic, real, fake) > 0
    # differentiable w.r.t. the critic's parameters
    w = (2 * unit).requires_grad_(True)
    gradient_penalty(_linear_critic(w), real, fake).backward()
    assert w.grad is not None and w.grad.norm() > 0


def test_wgan_losses_and_izi_f() -> None:
    assert float(wgan_critic_loss(torch.tensor([2.0, 4.0]), torch.tensor([1.0]))) == -2.0
    assert float(wgan_generator_loss(torch.tensor([1.0, 3.0]))) == -2.0
    g = torch.Generator().manual_seed(1)
    x, rec = torch.rand(3, 2, 8, 8, generator=g), torch.rand(3, 2, 8, 8, generator=g)
    fx, frec = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g)
    score = izi_f_loss(x, rec, fx, frec, kappa=0.7)
    expected = (x - rec).pow(2).flatten(1).mean(1) + 0.7 * (fx - frec).pow(2).mean(1)
    assert torch.allclose(score, expected)
    m = fanogan_map(x, rec, fx, frec, kappa=0.7)
    # the map's mean (over 2 channels, then 64 pixels) against izi_f's mean over 128 values, both
    # float32 sums of squares (same sign: a relative bound)
    assert m.shape == (3, 8, 8)
    torch.testing.assert_close(m.flatten(1).mean(1), score, rtol=tolerance(torch.float32, terms=128)["rtol"], atol=0)
    assert torch.equal(izi_f_loss(x, x, fx, fx, 1.0), torch.zeros(3))


def test_networks_shapes() -> None:
    for size in (16, 28, 32):
        x = torch.rand(2, 3, size, size)
        assert Critic(3, size, 4)(x).shape == (2,)
        assert ConvEncoder(3, size, 5, 4)(x).shape == (2, 5)
    assert LatentEncoder(ResNetEncoder(1, 4, "cifar"), 6)(torch.rand(2, 1, 16, 16)).shape == (2, 6)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    encoder = ResNetEncoder(1, 8, "cifar").eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    normals, _ = make_phantoms(8, 32, seed=0)
    return FAnoGANDetector(**TINY).fit(normals, encoder), encoder, before


def test_fit_gives_maps_and_finite_scores(fitted) -> None:
    det, encoder, _ = fitted
    test, _ = make_phantoms(3, 32, seed=1, lesion=True)
    out = det.score(test, encoder)
    assert out.maps.shape == (3, 32, 32) and out.scores.shape == (3,)
    assert torch.isfinite(out.scores).all() and (out.maps >= 0).all()
    with torch.no_grad():  # the score is izi_f of the image
        x = test.to(det.device)
        rec = det.generator(det.encoder(x))
        izi = izi_f_loss(x, rec, det.critic.features(x), det.critic.features(rec), det.params.kappa)
    # the score is the mean of the map (residual + feature term at each of 32 x 32 pixels), izi_f the
    # mean residual + feature term: float32 sums of 1024 squares in two orders (a relative bound)
    torch.testing.assert_close(out.scores.float(), izi, rtol=tolerance(torch.float32, terms=32 * 32)["rtol"], atol=0)
    assert isinstance(det.encoder, LatentEncoder)


def test_medad_encoder_is_copied_not_modified(fitted) -> None:
    det, encoder, before = fitted
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not encoder.training and det.encoder.backbone is not encoder
    normals, _ = make_phantoms(4, 32, seed=0)
    still = FAnoGANDetector(**{**TINY, "epochs": 1, "lr": 1e-12}).fit(normals, encoder)
    for name, p in still.encoder.backbone.named_parameters():
        assert torch.allclose(p, dict(encoder.named_parameters())[name], atol=1e-6), name


def test_save_load_through_the_registry(fitted) -> None:
    det, encoder, _ = fitted
    test, _ = make_phantoms(3, 32, seed=2, lesion=True)
    fresh = build_detector("fanogan", TINY)
    fresh.load_state_dict(det.state_dict())
    assert isinstance(fresh.encoder, LatentEncoder)
    assert torch.allclose(fresh.score(test, None).scores, det.score(test, encoder).scores, atol=1e-6)


def test_scratch_encoder_and_unusable_medad_encoder() -> None:
    normals = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for params, encoder in (({"encoder_init": "scratch"}, ResNetEncoder(1, 4, "cifar")),
                            ({}, None), ({}, ResNetEncoder(3, 4, "cifar")), ({}, nn.Identity())):
        det = FAnoGANDetector(**TINY, **params).fit(normals, encoder)
        assert isinstance(det.encoder, ConvEncoder) and det.backbone_spec.numel() == 0
        fresh = build_detector("fanogan", {**TINY, **params})
        fresh.load_state_dict(det.state_dict())
        assert torch.allclose(fresh.score(normals, None).scores, det.score(normals, None).scores, atol=1e-6)

