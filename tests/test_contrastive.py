"""NT-Xent against hand-computed values and a loop, the contrastive method and the registry."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from medad.config import MethodConfig
from medad.methods.contrastive import ContrastiveMethod, nt_xent
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder

from tolerance import tolerance  # tests/ is on sys.path


def _loop_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (1) written out term by term, averaged over all 2N anchors."""
    z = torch.cat([z1, z2])
    n2 = len(z)
    total = torch.tensor(0.0, dtype=torch.float64)
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sim = [float(torch.nn.functional.cosine_similarity(z[i], z[k], dim=0)) / tau for k in range(n2)]
        denominator = sum(math.exp(sim[k]) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim[j]) / denominator)
    return total / n2


def test_nt_xent_aligned_orthogonal_pairs_hit_the_hand_computed_value() -> None:
    # 3 images, both views identical unit vectors, different images orthogonal:
    # each anchor has cos 1 with its positive and cos 0 with its 4 negatives, so with tau = 0.5
    # L = -log(e^2 / (e^2 + 4)) = log(1 + 4 e^-2)
    z = torch.eye(3) * torch.tensor([[1.0], [2.0], [0.5]])  # norms must not matter
    expected = math.log(1 + 4 * math.exp(-2))
    # float32 log-softmax over the 5 other views and a mean over 6 anchors against float64; the loss
    # 0.43 is log-sum-exp 2.43 minus the positive's logit 2 (scale 6)
    tol = tolerance(torch.float32, terms=5 + 6, scale=6.0)
    assert nt_xent(z, z.clone(), 0.5).item() == pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"])


def test_nt_xent_swapped_pairs_cost_more_and_matches_the_loop() -> None:
    z1 = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # float32 rounding ~1e-5
    z2 = z1 + 0.1 * torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    aligned = nt_xent(z1, z2, 0.2)
    swapped = nt_xent(z1, z2[[1, 0, 3, 4, 2]], 0.2)
    assert swapped > aligned
    for tau in (0.07, 0.2, 1.0):
        assert nt_xent(z1, z2, tau).item() == pytest.approx(_loop_nt_xent(z1, z2, tau).item(), rel=1e-5)


def test_nt_xent_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must both be"):
        nt_xent(torch.rand(3, 4), torch.rand(2, 4), 0.5)


def _method(**params) -> ContrastiveMethod:
    torch.manual_seed(0)
    return ContrastiveMethod(ResNetEncoder(1, width=8, stem="cifar"), **params)


def test_training_loss_terms() -> None:
    method = _method(temperature=0.5, proj_dim=16)
    out = method.training_loss(torch.rand(4, 1, 16, 16))
    assert set(out) == {"loss", "positive_similarity"}
    assert out["loss"].requires_grad and out["loss"].ndim == 0
    assert not out["positive_similarity"].requires_grad and -1 <= out["positive_similarity"] <= 1
    assert method.head(torch.rand(2, 64)).shape == (2, 16)
    with pytest.raises(ValueError, match="at least 2"):
        method.training_loss(torch.rand(1, 1, 16, 16))


def test_params_map_to_augmentation() -> None:
    method = _method(crop_scale_min=0.3, rotation_degrees=5, hflip=False, brightness=0.1, contrast=0.2, blur_p=0.5)
    aug = method.augment
    got = (aug.scale, aug.degrees, aug.hflip_p, aug.brightness, aug.contrast, aug.blur_p)
    assert got == ((0.3, 1.0), 5, 0.0, 0.1, 0.2, 0.5)
    assert _method().augment.blur_p == 0.0  # the ISBI-2022 recipe has no blur
    assert method.head.net[0].out_features == method.encoder.out_dim  # proj_hidden=None


def test_a_few_steps_reduce_the_loss() -> None:
    method = _method(temperature=0.5)
    # smooth random images: crops of i.i.d. pixel noise share nothing a network could match
    coarse = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-2)

    def loss_at_fixed_views() -> float:
        torch.manual_seed(123)
        return method.training_loss(images)["loss"].item()

    before = loss_at_fixed_views()
    for _ in range(40):
        optimiser.zero_grad()
        method.training_loss(images)["loss"].backward()
        optimiser.step()
    assert loss_at_fixed_views() < before - 0.3


def test_registry_builds_and_reports_bad_names_and_params() -> None:
    enc = ResNetEncoder(1, 8, "cifar")
    assert METHODS["contrastive"] is ContrastiveMethod
    method = build_method(MethodConfig(name="contrastive", params={"temperature": 0.3}), enc)
    assert isinstance(method, ContrastiveMethod) and method.encoder is enc
    with pytest.raises(ValueError, match="unknown method 'simclr'; known methods: .*contrastive"):
        build_method(MethodConfig(name="simclr"), enc)
    with pytest.raises(ValidationError, match="method 'contrastive' params") as info:
        build_method(MethodConfig(params={"temperature": -1, "tau": 0.1}), enc)
    assert {e["loc"][0] for e in info.value.errors()} == {"temperature", "tau"}
