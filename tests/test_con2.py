"""CON2: both losses against loops over the paper's formulas, α annealing, the method, context views
in the embedding detectors and the silhouette diagnostic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from sklearn.metrics import silhouette_score
from torch import nn

from medad.augment.context import equalize
from medad.augment.tta import tta_view
from medad.config import MethodConfig, TrainConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.registry import build_detector
from medad.methods.con2 import CON2Method, con2_views, context_silhouette, positive_pair_loss
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder
from medad.train.loop import train_method


def _method(**params) -> CON2Method:
    torch.manual_seed(0)
    return CON2Method(ResNetEncoder(1, width=8, stem="cifar"), **params)


def _ell(z: torch.Tensor, i: int, j: int, tau: float) -> float:
    """ℓ(z_i, z_j, Z) of CON2 eq. 1, term by term."""
    sim = lambda a, b: float(F.cosine_similarity(z[a], z[b], dim=0))  # noqa: E731
    denominator = sum(math.exp(sim(i, k) / tau) for k in range(len(z)) if k != i)
    return -math.log(math.exp(sim(i, j) / tau) / denominator)


def test_context_loss_is_eq_5() -> None:
    n, tau = 3, 0.3
    z = torch.randn(4 * n, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    context = [0] * n + [1] * n + [0] * n + [1] * n  # the layout of con2_views
    pairs = [(i, j) for i in range(4 * n) for j in range(4 * n) if i != j and context[i] == context[j]]
    assert len(pairs) == 4 * n * (2 * n - 1)  # K of eq. 5
    expected = sum(_ell(z, i, j, tau) for i, j in pairs) / (4 * n * (2 * n - 1))
    assert positive_pair_loss(z, torch.tensor(context), tau).item() == pytest.approx(expected, rel=1e-10)


def test_content_loss_is_eq_7() -> None:
    n, tau = 3, 0.5
    z = torch.randn(4 * n, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    image = [i % n for i in range(4 * n)]
    pairs = [(i, j) for i in range(4 * n) for j in range(4 * n) if i != j and image[i] == image[j]]
    assert len(pairs) == 12 * n  # |Λ(x)| = 4 views, 12 ordered pairs per image
    expected = sum(_ell(z, i, j, tau) for i, j in pairs) / (12 * n)
    assert positive_pair_loss(z, torch.tensor(image), tau).item() == pytest.approx(expected, rel=1e-10)


def test_content_loss_reaches_its_minimum_when_views_coincide_and_images_are_orthogonal() -> None:
    # each anchor: 3 positives at cos 1 and 4(N - 1) negatives at cos 0 in the denominator, so
    # ℓ = -log(e^{1/τ} / (3 e^{1/τ} + 4(N - 1))) = log(3 + 4(N - 1) e^{-1/τ}) for every positive pair
    n, tau = 4, 0.2
    z = torch.eye(n, dtype=torch.float64).repeat(4, 1) * 3.0  # norms do not matter
    ids = torch.arange(n).repeat(4)
    optimum = math.log(3 + 4 * (n - 1) * math.exp(-1 / tau))
    assert positive_pair_loss(z, ids, tau).item() == pytest.approx(optimum, rel=1e-12)
    noisy = z + 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert positive_pair_loss(noisy, ids, tau).item() > optimum


def test_loss_needs_pairs_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="no positive pairs"):
        positive_pair_loss(torch.eye(3), torch.arange(3), 0.5)
    with pytest.raises(ValueError, match="labels"):
        positive_pair_loss(torch.eye(3), torch.arange(2), 0.5)


def test_views_layout() -> None:
    x = torch.rand(3, 1, 4, 4)
    views, contexts, ids = con2_views(x, "equalize", lambda v: v)
    assert torch.equal(views[:3], x) and torch.equal(views[3:6], equalize(x)) and torch.equal(views[6:], views[:6])
    assert contexts.tolist() == [0, 0, 0, 1, 1, 1] * 2 and ids.tolist() == [0, 1, 2] * 4


def test_alpha_is_annealed_linearly_by_the_training_loop() -> None:
    method = _method(proj_dim=8)
    assert method.content_weight == 0.0
    method.on_train_step(0.3)
    assert method.content_weight == pytest.approx(0.3)
    method.on_train_step(1.0)
    assert method.content_weight == 1.0
    history = train_method(
        _method(proj_dim=8), torch.rand(8, 1, 16, 16), None,
        TrainConfig(epochs=2, batch_size=4, progress=False),
    )
    # progress before each of the 2 x 2 steps: 0, 1/4 | 2/4, 3/4 -> epoch means 1/8 and 5/8
    assert [h["alpha"] for h in history] == pytest.approx([0.125, 0.625])
    quick = _method(proj_dim=8, alpha=2.0, alpha_ramp=0.5)  # full weight from half-way on
    quick.on_train_step(0.25)
    assert quick.content_weight == pytest.approx(1.0)
    quick.on_train_step(0.75)
    assert quick.content_weight == 2.0


def test_a_few_steps_reduce_the_loss() -> None:
    method = _method()
    method.on_train_step(1.0)  # α = 1: the full objective
    images = make_phantoms(8, 32, seed=0)[0]
    optimiser = torch.optim.Adam(method.parameters(), lr=2e-3)

    def loss_at_fixed_views() -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        return method.training_loss(images)

    before = loss_at_fixed_views()
    assert before["loss"].item() == pytest.approx((before["loss_context"] + before["loss_content"]).item(), rel=1e-5)
    assert before["alpha"].item() == 1.0 and not before["loss_context"].requires_grad
    for _ in range(8):
        optimiser.zero_grad()
        method.training_loss(images)["loss"].backward()
        optimiser.step()
    assert loss_at_fixed_views()["loss"].item() < before["loss"].item() - 0.1


def test_state_dict_round_trip_and_heads() -> None:
    method = _method(context="flip", proj_dim=16)
    assert method.head(torch.rand(2, 64)).shape == method.content_head(torch.rand(2, 64)).shape == (2, 16)
    assert any(k.startswith("content_head.") for k in method.state_dict())
    fresh = CON2Method(ResNetEncoder(1, width=8, stem="cifar"), context="flip", proj_dim=16)
    fresh.load_state_dict(method.state_dict())
    x = torch.rand(4, 1, 16, 16)
    torch.manual_seed(5)
    expected = method.eval().training_loss(x)["loss_content"]
    torch.manual_seed(5)
    assert torch.equal(fresh.eval().training_loss(x)["loss_content"], expected)


def test_registry_and_params() -> None:
    assert METHODS["con2"] is CON2Method
    method = build_method(MethodConfig(name="con2", params={"context": "equalize"}), ResNetEncoder(1, 8, "cifar"))
    p = method.params
    assert (p.context, p.temperature, p.content_temperature, p.alpha, p.proj_dim) == ("equalize", 0.2, 0.2, 1.0, 128)
    with pytest.raises(ValidationError, match="known contexts"):
        build_method(MethodConfig(name="con2", params={"context": "rotate"}), ResNetEncoder(1, 8, "cifar"))
    with pytest.raises(ValueError, match="at least 2"):
        method.training_loss(torch.rand(1, 1, 16, 16))


def test_example_figure(tmp_path) -> None:
    out = _method().example_figure(torch.rand(6, 1, 8, 8), tmp_path / "fig.png")
    assert Image.open(out).size == (2 * 26 + 2, 4 * 26 + 2)  # 4 rows of (image, inverted)


def test_detector_fits_every_context_and_tta_view_and_averages_them() -> None:
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(10, 1, 4, 4, generator=gen), torch.rand(4, 1, 4, 4, generator=gen)
    det = build_detector("nnd", {"tta": 1, "tta_seed": 3, "contexts": ["invert"]}).fit(train, nn.Flatten())
    assert det.bank.shape == (2 * 2, 10, 16)
    per_view = []
    for context in (lambda v: v, lambda v: 1 - v):
        for k in range(2):
            bank = F.normalize(tta_view(context(train), k, 3).flatten(1), dim=1)
            query = F.normalize(tta_view(context(test), k, 3).flatten(1), dim=1)
            per_view.append(-(query @ bank.T).max(1).values)
    scores = det.score(test, nn.Flatten()).scores
    assert torch.allclose(scores, torch.stack(per_view).mean(0).double(), atol=1e-6)
    # identity views alone are the plain score: contexts=[] keeps the old behaviour
    plain = build_detector("nnd", {"tta": 1, "tta_seed": 3}).fit(train, nn.Flatten()).score(test, nn.Flatten())
    assert torch.allclose(plain.scores, torch.stack(per_view[:2]).mean(0).double(), atol=1e-6)


@pytest.mark.parametrize("name", ["lh", "mahalanobis", "nnd"])
def test_detector_state_dict_round_trip_with_contexts(name) -> None:
    gen = torch.Generator().manual_seed(1)
    train, test = torch.rand(20, 1, 4, 4, generator=gen), torch.rand(5, 1, 4, 4, generator=gen)
    params = {"contexts": ["flip", "invert"]}
    det = build_detector(name, params).fit(train, nn.Flatten())
    fresh = build_detector(name, params)
    fresh.load_state_dict(det.state_dict())
    assert torch.equal(fresh.score(test, nn.Flatten()).scores, det.score(test, nn.Flatten()).scores)
    without = build_detector(name)
    without.load_state_dict(det.state_dict())
    with pytest.raises(ValueError, match=r"fitted with 3 views but .*contexts=\[\] ask for 1"):
        without.score(test, nn.Flatten())


def test_detector_cache_shares_identity_views_and_keys_contexts() -> None:
    calls = []
    encoder = nn.Sequential(nn.Flatten())
    encoder.register_forward_hook(lambda *_: calls.append(1))
    images, cache = torch.rand(6, 1, 4, 4), {}
    build_detector("nnd").fit(images, encoder, cache)
    build_detector("lh", {"contexts": ["invert"]}).fit(images, encoder, cache)
    build_detector("mahalanobis", {"contexts": ["flip"]}).fit(images, encoder, cache)
    assert len(calls) == 3  # identity once, then one new context each
    with pytest.raises(ValueError, match="known contexts"):
        build_detector("nnd", {"contexts": ["rotate"]})
    with pytest.raises(ValueError, match="must not repeat"):
        build_detector("nnd", {"contexts": ["flip", "flip"]})


def test_context_silhouette_matches_sklearn_and_restores_mode() -> None:
    images = make_phantoms(6, 16, seed=0)[0]
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(256)).train()
    value = context_silhouette(encoder, images, "invert", batch_size=4)
    assert encoder.training
    with torch.no_grad():
        z = encoder.eval()(torch.cat([images, 1 - images])).double().numpy()
    # float64 like context_silhouette: sklearn on float32 input would take the 256-term cosine
    # distances in float32 (BLAS, CPU-dependent rounding up to ~2 gamma_256 = 3e-5 of each distance)
    assert value == pytest.approx(silhouette_score(z, [0] * 6 + [1] * 6, metric="cosine"), abs=1e-6)
    assert -1 <= value <= 1
