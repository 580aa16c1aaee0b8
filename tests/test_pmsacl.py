"""PMSACL: the losses against loops over the paper's formulas, frozen class centres, the method."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from medad.config import MethodConfig, TrainConfig
from medad.data.synthetic import make_phantoms
from medad.methods.contrastive import nt_xent
from medad.methods.pmsacl import (
    PMSACLMethod,
    class_centres,
    multi_centring_loss,
    pmsacl_loss,
)
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder
from medad.train.loop import train_method
from tolerance import tolerance




def _loop_pmsacl(
    z1: torch.Tensor, z2: torch.Tensor, classes: list[int], centres: torch.Tensor, tau: float, alpha: float
) -> float:
    """Eqs. (4)-(7) term by term: anchor x^(n,l), partner x^(n,1-l), denominator over all other views."""
    views = [(i, 0, z1[i]) for i in range(len(z1))] + [(i, 1, z2[i]) for i in range(len(z2))]

    def f(i: int, z: torch.Tensor) -> torch.Tensor:  # eq. (6)
        d = z - centres[classes[i]]
        return d / d.norm()

    def kappa(n: int, m: int) -> float:  # eq. (7)
        return 1 / (alpha * tau) if n == m else 1 / tau

    total = 0.0
    for i, view, z in views:
        n = classes[i]
        partner = (z2 if view == 0 else z1)[i]
        numerator = math.exp(kappa(n, n) * float(f(i, z) @ f(i, partner)))
        denominator = sum(
            math.exp(kappa(n, classes[j]) * float(f(i, z) @ f(j, zj)))
            for j, k, zj in views
            if (j, k) != (i, view)
        )
        total += -math.log(numerator / denominator)
    return total / len(views)  # eq. (4): expectation over images, classes and both views


def test_pmsacl_loss_matches_the_loop_and_the_temperatures_matter() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    classes = [0, 1, 1, 2, 0, 2]
    centres = torch.randn(3, 5, generator=g, dtype=torch.float64)
    for tau, alpha in ((0.5, 0.5), (0.2, 0.3), (1.0, 2.0)):
        got = pmsacl_loss(z1, z2, torch.tensor(classes), centres, tau, alpha).item()
        assert got == pytest.approx(_loop_pmsacl(z1, z2, classes, centres, tau, alpha), rel=1e-9)
    same_temperature = pmsacl_loss(z1, z2, torch.tensor(classes), centres, 0.5, 1.0).item()
    assert same_temperature != pytest.approx(pmsacl_loss(z1, z2, torch.tensor(classes), centres, 0.5, 0.5).item())


def test_with_alpha_one_it_is_nt_xent_of_the_centred_features() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2, centres = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(2, 4, generator=g)
    classes = torch.tensor([0, 1, 0, 1, 1])
    expected = nt_xent(z1 - centres[classes], z2 - centres[classes], 0.3)
    assert pmsacl_loss(z1, z2, classes, centres, 0.3, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_pmsacl_loss_hand_computed_value() -> None:
    # two classes, centres at the origin, all features orthogonal except the two views of an image:
    # the positive logit is 1/(alpha tau) = 4, the two other-class views contribute exp(0) each
    z = torch.eye(2)
    got = pmsacl_loss(z, z, torch.tensor([0, 1]), torch.zeros(2, 2), temperature=0.5, alpha=0.5).item()
    # float32: the loss is log(1 + 2 e^-4) = 0.036 taken from a softmax denominator of about 1.04 (4 views):
    # one rounding of that sum (1 ulp = 3e-6 of the loss, by summation order) is an absolute error in the loss
    expected = math.log(1 + 2 * math.exp(-4))
    assert got == pytest.approx(expected, rel=0, abs=tolerance(torch.float32, terms=4)["atol"])
    with pytest.raises(ValueError, match="need z1, z2"):
        pmsacl_loss(z, z[:1], torch.tensor([0, 1]), torch.zeros(2, 2), 0.5, 0.5)


def test_multi_centring_loss_is_zero_at_the_centres_and_the_squared_distance_otherwise() -> None:
    centres = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    classes = torch.tensor([1, 0, 1])
    assert multi_centring_loss(centres[classes], classes, centres).item() == 0.0
    z = centres[classes] + torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.5, 0.5, 0.0]])
    loop = sum(float(((z[i] - centres[classes[i]]) ** 2).sum()) for i in range(3)) / 3
    assert multi_centring_loss(z, classes, centres).item() == pytest.approx(loop)  # (1 + 8 + 0.5) / 3


def test_class_centres_are_class_means_and_need_every_class() -> None:
    z = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0]])
    got = class_centres(z, torch.tensor([0, 0, 2, 1]), 3)
    assert torch.equal(got, torch.tensor([[2.0, 1.0], [0.0, 4.0], [5.0, 5.0]]))
    with pytest.raises(ValueError, match="every class"):
        class_centres(z, torch.tensor([0, 0, 2, 2]), 3)


def _method(**params) -> PMSACLMethod:
    torch.manual_seed(0)
    return PMSACLMethod(ResNetEncoder(1, width=8, stem="cifar"), **params)


def test_centres_are_set_once_frozen_and_survive_a_state_dict_round_trip() -> None:
    method = _method()
    images = torch.rand(6, 1, 32, 32)
    with pytest.raises(RuntimeError, match="not set"):
        method.eval().training_loss(images)
    method.train()
    first = method.training_loss(images)
    assert bool(method.centres_ready) and method.centres.abs().sum() > 0
    assert not method.centres.requires_grad
    centres = method.centres.clone()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    first["loss"].backward()
    opt.step()
    method.training_loss(images)
    assert torch.equal(method.centres, centres)

    restored = _method()
    restored.load_state_dict(method.state_dict())
    assert bool(restored.centres_ready) and torch.equal(restored.centres, centres)
    restored.training_loss(images)
    assert torch.equal(restored.centres, centres)
    with torch.no_grad():
        assert torch.isfinite(restored.eval().training_loss(images)["loss"])  # validation loss path


class _Interrupted(PMSACLMethod):
    """Raises KeyboardInterrupt on the third batch (the first of epoch 2), like Ctrl-C."""

    calls = 0

    def training_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return super().training_loss(images)


def test_resumed_training_ends_with_the_same_weights_and_centres(tmp_path) -> None:
    data = make_phantoms(8, 32, seed=1)[0]
    cfg = TrainConfig(epochs=2, batch_size=4, progress=False)
    straight = _method()
    torch.manual_seed(5)
    train_method(straight, data, None, cfg)
    torch.manual_seed(0)
    interrupted = _Interrupted(ResNetEncoder(1, width=8, stem="cifar"))
    torch.manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        train_method(interrupted, data, None, cfg, checkpoint_path=tmp_path / "last.pt", fingerprint="f")
    torch.manual_seed(99)  # other initial weights and RNG: everything must come from the checkpoint
    resumed = PMSACLMethod(ResNetEncoder(1, width=8, stem="cifar"))
    train_method(resumed, data, None, cfg, checkpoint_path=tmp_path / "last.pt", resume=True, fingerprint="f")
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_training_loss_terms_and_a_few_steps_reduce_it() -> None:
    method = _method(num_classes=3)
    images = make_phantoms(16, 32, seed=0)[0]
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    losses = []
    for step in range(20):
        out = method.training_loss(images[(step % 2) * 8 : (step % 2) * 8 + 8])
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss", "loss_ctr", "loss_pmsacl", "loss_aug", "loss_pos", "accuracy_aug", "accuracy_pos"}
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    assert 0 <= out["accuracy_aug"] <= 1 and 0 <= out["accuracy_pos"] <= 1
    terms = out["loss_ctr"] + out["loss_pmsacl"] + out["loss_aug"] + out["loss_pos"]
    assert out["loss"].item() == pytest.approx(terms.item(), rel=1e-5)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_local_view_trains_on_crops_and_needs_large_enough_images() -> None:
    method = _method(view="local", local_patch_size=16)
    assert method.pos_patch(torch.rand(2, 1, 128, 128)) == (16, 4)
    assert method.pos_patch(torch.rand(2, 1, 32, 32)) == (8, 2)
    assert torch.isfinite(method.training_loss(torch.rand(4, 1, 40, 40))["loss"])
    with pytest.raises(ValueError, match="at least 32 px"):
        _method(view="local").training_loss(torch.rand(4, 1, 28, 28))


def test_builds_through_the_registry_with_validated_params() -> None:
    assert METHODS["pmsacl"] is PMSACLMethod
    encoder = ResNetEncoder(1, width=8, stem="cifar")
    method = build_method(MethodConfig(name="pmsacl", params={"alpha": 0.3, "num_classes": 5}), encoder)
    p = method.params
    assert (p.alpha, p.temperature, p.proj_dim) == (0.3, 0.2, 128)
    assert (method.medmix.max_lesions, method.medmix.wave_p, method.medmix.size) == (4, 0.25, (0.1, 0.25))
    assert (method.medmix.foreground, method.medmix.feather) == (None, 0.0)  # the paper's MedMix by default
    tuned = build_method(MethodConfig(name="pmsacl", params={"medmix_foreground": 0.1, "medmix_feather": 0.3}), encoder)
    assert (tuned.medmix.foreground, tuned.medmix.feather) == (0.1, 0.3)
    assert method.pos_patch(torch.rand(1, 1, 64, 64)) == (16, 4)
    assert _method(patch_size=6, jitter=0).pos_patch(torch.rand(1, 1, 64, 64)) == (6, 0)
    for bad in ({"num_classes": 1}, {"lesion_size_min": 0.3, "lesion_size_max": 0.2}, {"view": "patch"}, {"tau": 1}):
        with pytest.raises(ValidationError):
            build_method(MethodConfig(name="pmsacl", params=bad), encoder)


def test_training_loop_sets_centres_over_the_whole_training_set_once() -> None:
    method = _method(num_classes=2)
    images = torch.rand(10, 1, 32, 32)
    method.on_train_start(total_steps=5, images=images)
    assert bool(method.centres_ready)
    centres = method.centres.clone()
    running = method.encoder.bn1.running_mean.clone()
    method.on_train_start(total_steps=5, images=torch.rand(10, 1, 32, 32))  # resumed: kept
    assert torch.equal(method.centres, centres)
    assert torch.equal(method.encoder.bn1.running_mean, running)  # BatchNorm running stats untouched


def test_position_task_only_in_the_local_model_by_default() -> None:
    images = torch.rand(4, 1, 64, 64)
    assert _method().training_loss(images)["loss_pos"] == 0
    assert _method(view="local").training_loss(images)["loss_pos"] > 0
    assert _method(weight_pos=1.0).training_loss(images)["loss_pos"] > 0


@pytest.mark.parametrize("weight_ctr", [1.0, 0.0])
def test_loss_is_eq_1_with_the_weights(weight_ctr: float) -> None:
    """eq. (1): the weighted sum of the terms; ``weight_ctr: 0`` (the CPU-budget setting) drops ℓ_ctr."""
    out = _method(weight_ctr=weight_ctr, weight_aug=0.5).training_loss(make_phantoms(6, 32, seed=0)[0])
    assert out["loss_ctr"] > 0
    expected = weight_ctr * out["loss_ctr"] + out["loss_pmsacl"] + 0.5 * out["loss_aug"]
    assert torch.isclose(out["loss"], expected)
