"""The device and precision policy on a CPU: fp32 by default (CPU figures unchanged), bf16 autocast
when asked (the path a GPU takes), statistics kept in fp32/fp64, losses checked once per epoch where
reading them back would wait for a device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medad import AnomalyDetector
from medad.config import TrainConfig
from medad.data.synthetic import make_phantoms
from medad.device_policy import ComputePolicy, StagedImages, autocast_for, policy_for
from medad.methods.contrastive import ContrastiveMethod
from medad.models.resnet import ResNetEncoder
from medad.train.core import optimizer_step, run_epochs
from medad.train.loop import train_method


def test_resolve_is_fp32_on_a_cpu_unless_bf16_is_asked():
    assert ComputePolicy.resolve("cpu").dtype is None and ComputePolicy.resolve("cpu", "fp32").dtype is None
    assert ComputePolicy.resolve("cpu", "bf16").dtype is torch.bfloat16
    assert ComputePolicy.resolve("cpu").eager_checks
    with pytest.raises(ValueError, match="train.precision"):
        ComputePolicy.resolve("cpu", "fp16")  # type: ignore[arg-type]


def test_autocast_follows_the_active_policy_only_inside_it():
    net, x = nn.Linear(4, 2), torch.rand(3, 4)
    with autocast_for(torch.device("cpu")):
        assert net(x).dtype == torch.float32  # no policy active: fp32
    with ComputePolicy.resolve("cpu", "bf16").activate():
        with autocast_for(torch.device("cpu")):
            assert net(x).dtype == torch.bfloat16
        assert policy_for(torch.device("cpu")).dtype is torch.bfloat16
        with ComputePolicy.resolve("cpu", "fp32").activate():  # nested: the inner one rules
            with autocast_for(torch.device("cpu")):
                assert net(x).dtype == torch.float32
    assert policy_for(torch.device("cpu")).dtype is None


def test_staged_images_on_a_cpu_are_the_images_themselves():
    images = torch.rand(6, 1, 8, 8)
    staged = StagedImages(images, torch.device("cpu"))
    idx = torch.tensor([4, 0, 2])
    assert len(staged) == 6 and staged.images is images and torch.equal(staged[idx], images[idx])


def test_deferred_checks_stop_a_non_finite_epoch_before_its_hook():
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(8, 2)
    seen = []

    def step(idx, epoch, done):
        loss = net(x[idx]).pow(2).mean() * (float("nan") if epoch == 2 else 1.0)
        return {"loss": optimizer_step(loss, opt, "toy: {loss} at epoch {epoch}", epoch, check=False)}

    with pytest.raises(FloatingPointError, match="toy: nan at epoch 2"):
        run_epochs(step, lambda epoch: [torch.arange(4), torch.arange(4, 8)], epochs=3, live=False,
                   error="toy: {loss} at epoch {epoch}", after_epoch=lambda record: seen.append(record["epoch"]))
    assert seen == [1]  # epoch 2's hook (its checkpoint) never ran
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(FloatingPointError, match="toy: nan at epoch 5"):  # eager: before the weights change
        optimizer_step(net(x).sum() * float("nan"), opt, "toy: {loss} at epoch {epoch}", 5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _method() -> ContrastiveMethod:
    torch.manual_seed(0)
    return ContrastiveMethod(ResNetEncoder(1, width=4, stem="cifar"))


def test_precision_auto_on_a_cpu_trains_exactly_as_fp32():
    images = make_phantoms(12, 16, seed=0)[0]
    runs = []
    for precision in ("auto", "fp32"):
        method = _method()
        history = train_method(method, images, None, TrainConfig(epochs=2, batch_size=4, progress=False,
                                                                 precision=precision))
        runs.append((history, method.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def _loss_on_fixed_views(method: ContrastiveMethod, images: torch.Tensor) -> float:
    """The fp32 training loss of ``images`` in one batch, with the same random views every call."""
    torch.manual_seed(123)
    with torch.no_grad():
        return float(method.train().training_loss(images)["loss"])


def test_bf16_training_keeps_fp32_weights_and_learns():
    """The per-epoch losses of 2 batches of random views are too noisy to compare across CPUs (on
    AMX machines bf16 runs native kernels and epoch 3 can read above epoch 1); the loss of one fixed
    set of views before and after training is not (4.11 -> 3.36 when written)."""
    images = make_phantoms(16, 16, seed=0)[0]
    method = _method()
    before = _loss_on_fixed_views(method, images)
    history = train_method(method, images, None, TrainConfig(epochs=3, batch_size=8, progress=False, lr=1e-2,
                                                             precision="bf16"))
    assert all(p.dtype == torch.float32 for p in method.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert _loss_on_fixed_views(method, images) < before - 0.2


def test_bf16_scoring_keeps_statistics_in_full_precision_and_close_to_fp32():
    normals, _ = make_phantoms(24, 16, seed=0)
    test, _ = make_phantoms(6, 16, seed=1, lesion=True)
    scores = {}
    for precision in ("fp32", "bf16"):
        model = AnomalyDetector(image_size=16, epochs=0, method="none", detector="mahalanobis", progress=False,
                                precision=precision)
        model.config.detector.also = ["padim"]
        model.config.encoder.width = 8
        model.fit(normals)
        det = model.detectors_["mahalanobis"]
        assert all(b.dtype in (torch.float32, torch.float64) for b in det.buffers())
        assert model.detectors_["padim"].precision.dtype == torch.float32
        scores[precision] = {name: out.scores for name, out in model.score_all(test).items()}
        assert all(s.dtype == torch.float64 for s in scores[precision].values())
    for name in scores["fp32"]:
        a, b = scores["fp32"][name], scores["bf16"][name]
        assert not torch.equal(a, b)  # the features did go through bf16 ...
        # ... which rounds them to 2^-8 relative: the scores move by about that, far less than their spread
        torch.testing.assert_close(b, a, rtol=0.1, atol=0.1 * float(a.std()))
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
