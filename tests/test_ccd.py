"""CCD (Tian et al., MICCAI 2021): eqs. (2)-(3) against direct computations, training, registry."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from medad.augment.strong import apply_strong
from medad.config import MethodConfig
from medad.methods.ccd import CCDMethod, patch_geometry, shift_classification_loss
from medad.methods.pretext import sample_patch_pairs
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder

from tolerance import tolerance  # tests/ is on sys.path
from toys import ToyEncoder




def test_shift_classification_loss_is_the_cross_entropy_of_hand_made_logits() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 4.0], [0.5, 2.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    direct = [-math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)) for row, y in zip(logits.tolist(), labels)]
    loss, accuracy = shift_classification_loss(logits, labels)
    # float32 log-softmax over 3 classes and a mean over 4 rows against float64; a row's loss is
    # log-sum-exp minus its logit, terms up to 4 in size for a mean loss of 0.9 (scale 5)
    tol = tolerance(torch.float32, terms=3 + 4, scale=5.0)
    assert loss.item() == pytest.approx(sum(direct) / 4, rel=tol["rtol"], abs=tol["atol"])
    assert accuracy.item() == 0.5 and not accuracy.requires_grad  # rows 0 and 3 are right


def _loop_eq2(z: torch.Tensor, n: int, k: int, tau: float) -> float:
    """Eq. (2) term by term; row ``v*K*N + j*N + i`` is weak view v of image i under strong class j.

    The positive of (v, j, i) is (1-v, j, i); every other (view, class, image) is a negative,
    including the other strong versions of the same image.
    """
    keys = [(v, j, i) for v in range(2) for j in range(k) for i in range(n)]
    total = 0.0
    for a, (v, j, i) in enumerate(keys):
        sim = {b: float(torch.cosine_similarity(z[a], z[b], dim=0)) / tau for b in range(len(keys)) if b != a}
        positive = keys.index((1 - v, j, i))
        total -= math.log(math.exp(sim[positive]) / sum(math.exp(s) for s in sim.values()))
    return total / len(keys)


def test_contrastive_and_classification_terms_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    names = ["rotation", "cutout"]  # K = 5 classes, cutout draws from the global RNG
    method = CCDMethod(ToyEncoder(), strong_augmentations=names, temperature=0.3, hflip=False, proj_dim=4)
    x = torch.rand(3, 1, 12, 12)

    torch.manual_seed(1)
    out = method.training_loss(x)

    torch.manual_seed(1)  # same draws, same order: strong augmentation, then the two weak views
    shifted, ids = apply_strong(x, names)
    features = method.encoder(torch.cat([method.augment(shifted), method.augment(shifted)]))
    z = method.head(features).detach()
    assert out["loss_con"].item() == pytest.approx(_loop_eq2(z, n=3, k=5, tau=0.3), rel=1e-5)
    expected_cla = nn.functional.cross_entropy(method.shift_classifier(features), ids.repeat(2))
    assert out["loss_cla"].item() == pytest.approx(expected_cla.item(), rel=1e-6)


def test_loss_is_the_weighted_sum_and_extras_are_detached() -> None:
    torch.manual_seed(0)
    method = CCDMethod(ToyEncoder(), weight_con=0.5, weight_cla=2.0, weight_pos=0.0)
    out = method.training_loss(torch.rand(4, 1, 16, 16))
    assert out["loss"].item() == pytest.approx(0.5 * out["loss_con"].item() + 2 * out["loss_cla"].item(), rel=1e-6)
    assert out["loss"].requires_grad
    assert not any(v.requires_grad for k, v in out.items() if k != "loss")
    assert 0 <= out["accuracy_cla"] <= 1 and 0 <= out["accuracy_pos"] <= 1
    with pytest.raises(ValueError, match="at least 2"):
        method.training_loss(torch.rand(1, 1, 16, 16))


def test_flip_moves_before_the_strong_augmentation() -> None:
    method = CCDMethod(ToyEncoder(), hflip=True, crop_scale_min=0.3)
    assert method.augment.hflip_p == 0.0 and method.augment.scale == (0.3, 1.0)


@pytest.mark.parametrize("side", [16, 28, 32, 64, 224, 256])
def test_default_patch_geometry_fits(side: int) -> None:
    size, jitter = patch_geometry(side)
    assert size == side // 4 and jitter >= 0
    p1, _, _ = sample_patch_pairs(torch.rand(1, 1, side, side), size, jitter)
    assert p1.shape[-1] == size


@pytest.mark.parametrize("params", [{}, {"view": "local", "local_patch_size": 16}])
def test_a_few_steps_reduce_the_loss(params: dict) -> None:
    torch.manual_seed(0)
    method = CCDMethod(ResNetEncoder(1, width=8, stem="cifar"), **params)
    coarse = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-2)

    def loss_at_fixed_draws() -> float:
        torch.manual_seed(123)
        return method.training_loss(images)["loss"].item()

    before = loss_at_fixed_draws()
    for _ in range(20):
        optimiser.zero_grad()
        loss = method.training_loss(images)["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        optimiser.step()
    assert loss_at_fixed_draws() < before - 0.3


def test_registry_builds_ccd_and_rejects_bad_params() -> None:
    enc = ResNetEncoder(1, 8, "cifar")
    assert METHODS["ccd"] is CCDMethod
    method = build_method(MethodConfig(name="ccd", params={"strong_augmentations": ["rotation"]}), enc)
    assert isinstance(method, CCDMethod) and method.encoder is enc and method.shift_classifier.out_features == 4
    bad = {"strong_augmentations": ["flip"], "view": "patch", "patchsize": 8}
    with pytest.raises(ValidationError, match="method 'ccd' params") as info:
        build_method(MethodConfig(name="ccd", params=bad), enc)
    assert {e["loc"][0] for e in info.value.errors()} == {"strong_augmentations", "view", "patchsize"}
    assert "unknown strong augmentations ['flip']" in str(info.value)


def test_one_shift_per_image_keeps_the_batch_size() -> None:
    seen: list[int] = []

    class Recording(ToyEncoder):
        def forward(self, x):
            seen.append(len(x))
            return super().forward(x)

    torch.manual_seed(0)
    for shifts, views in (("one", 2 * 8), ("all", 2 * 4 * 8)):  # rotation: K = 4 classes
        seen.clear()
        out = CCDMethod(Recording(), shifts=shifts, strong_augmentations=["rotation"]).training_loss(
            torch.rand(8, 1, 16, 16))
        assert seen == [views] and torch.isfinite(out["loss"]) and 0 <= out["accuracy_cla"] <= 1
