"""DINO with negative samples (Rafiee et al., ICANN 2022 eqs. 2-5): losses, teacher, centre, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from medad.config import MethodConfig, TrainConfig
from medad.data.preprocess import normalize_intensity
from medad.data.preprocessor import Preprocessor
from medad.data.synthetic import make_phantoms
from medad.methods.dino_neg import DinoNegMethod, distillation_loss, uniformity_loss
from medad.methods.registry import METHODS, build_method
from medad.models.resnet import ResNetEncoder
from medad.train.loop import build_optimizer, train_method

from tolerance import tolerance
from toys import ToyEncoder  # tests/ is on sys.path


def small_method(encoder: nn.Module | None = None, **params) -> DinoNegMethod:
    defaults = {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "n_local": 2, "n_local_negatives": 1}
    return DinoNegMethod(encoder or ToyEncoder(), **{**defaults, **params})


def softmax(row: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def test_distillation_loss_matches_a_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, 5, generator=gen)  # 2 global + 2 local views, 3 images, K = 5
    teacher = torch.randn(2, 3, 5, generator=gen)
    centre = torch.randn(5, generator=gen)
    total, pairs = 0.0, 0
    for g in range(2):
        for v in range(4):
            if v == g:
                continue
            for i in range(3):
                p_t = softmax((teacher[g, i] - centre).tolist(), 0.04)
                p_s = softmax(student[v, i].tolist(), 0.1)
                total -= sum(a * math.log(b) for a, b in zip(p_t, p_s)) / 3
            pairs += 1
    assert pairs == 6
    loss = distillation_loss(student, teacher, centre, 0.1, 0.04)
    assert loss.item() == pytest.approx(total / pairs, rel=1e-5)


def test_distillation_loss_has_no_gradient_through_the_teacher() -> None:
    student, teacher = torch.randn(3, 2, 4, requires_grad=True), torch.randn(2, 2, 4, requires_grad=True)
    distillation_loss(student, teacher, torch.zeros(4), 0.1, 0.04).backward()
    assert teacher.grad is None and student.grad is not None


def test_uniformity_loss_is_log_k_for_uniform_outputs_and_larger_otherwise() -> None:
    k = 6
    # float32 means of 4 k and 2 k terms of one sign (-log p), against float64: gamma_n of the mean
    uniform = torch.full((4, k), 0.3)
    assert uniformity_loss(uniform, 0.1).item() == pytest.approx(
        math.log(k), rel=tolerance(torch.float32, terms=uniform.numel())["rtol"])
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, -1.0], [0.2, 0.1, 0.0, 0.0, 0.0, 0.0]])
    direct = sum(-sum(math.log(p) for p in softmax(row, 0.1)) / k for row in logits.tolist()) / 2
    loss = uniformity_loss(logits, 0.1)
    rtol = tolerance(torch.float32, terms=logits.numel())["rtol"]
    assert loss.item() == pytest.approx(direct, rel=rtol) and loss.item() > math.log(k)


def test_teacher_temperature_and_momentum_schedules() -> None:
    m = small_method(teacher_temp_start=0.04)  # the thesis's schedule (the default starts at 0.02)
    assert m.teacher_temp == 0.04 and m.momentum == 0.996  # before the first step
    expected = {0.0: (0.04, 0.996), 0.5: (0.025, 0.998), 1.0: (0.01, 1.0)}
    for progress, (temp, momentum) in expected.items():
        m.on_train_step(progress)
        assert m.teacher_temp == pytest.approx(temp) and m.momentum == pytest.approx(momentum)


def test_teacher_is_an_exact_ema_and_the_optimiser_never_touches_it() -> None:
    torch.manual_seed(0)
    m = small_method()
    optimizer = build_optimizer(m.parameters(), TrainConfig(optimizer="adamw", weight_decay=0.5, lr=0.1))
    teacher = [m.encoder, m.teacher_head]
    assert not any(p.requires_grad for t in teacher for p in t.parameters())
    assert len(list(m.parameters())) == 2 * len([p for p in m.parameters() if p.requires_grad])
    before = [p.clone() for t in teacher for p in t.parameters()]
    m.on_train_step(0.25)
    loss = m.training_loss(torch.rand(4, 1, 16, 16))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after_step = [p.clone() for t in teacher for p in t.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after_step))  # no gradient, no weight decay
    m.after_optimizer_step()
    momentum = 1 - 0.004 * (1 + math.cos(math.pi * 0.25)) / 2
    student = [p for s in (m.student_encoder, m.student_head) for p in s.parameters()]
    teacher_now = [p for t in teacher for p in t.parameters()]
    assert not all(torch.equal(s, t) for s, t in zip(student, teacher_now))
    # float32 on both sides (m t0, then + (1 - m) s, possibly fused): a couple of roundings of |t0| <= ~1, far
    # below the update (1 - m)(s - t0), at least 1.7e-4 here, that a wrong m would change
    for t0, s, t in zip(before, student, teacher_now):
        torch.testing.assert_close(t, momentum * t0 + (1 - momentum) * s, **tolerance(torch.float32, terms=2))


def test_centre_moves_in_training_calls_only() -> None:
    torch.manual_seed(0)
    m = small_method(ResNetEncoder(1, width=4, stem="cifar"))
    outputs = []
    m.teacher_head.register_forward_hook(lambda module, inputs, out: outputs.append(out.detach()))
    x = torch.rand(4, 1, 16, 16)
    m.train().training_loss(x)
    expected = 0.1 * outputs[-1].mean(0)  # c ← 0.9 c + 0.1 mean g_t, from c = 0
    torch.testing.assert_close(m.centre, expected)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    with torch.no_grad():
        m.training_loss(x)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())  # centre, teacher BN statistics


def test_a_few_steps_reduce_the_loss_and_the_state_dict_restores_teacher_and_centre() -> None:
    torch.manual_seed(0)
    images, _ = make_phantoms(16, 32, seed=0)
    m = small_method(ResNetEncoder(1, width=8, stem="cifar"), out_dim=64, hidden_dim=64, bottleneck_dim=32)
    initial_teacher = [p.clone() for p in m.encoder.parameters()]
    history = train_method(m, images, None, TrainConfig(epochs=5, batch_size=8, progress=False))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss_neg"] < history[0]["loss_neg"] and history[-1]["loss_neg"] >= math.log(64)
    assert {"loss_pos", "loss_neg", "teacher_temp", "teacher_entropy"} <= set(history[0])
    assert not all(torch.equal(a, b) for a, b in zip(initial_teacher, m.encoder.parameters()))
    assert m.centre.abs().sum() > 0
    fresh = small_method(ResNetEncoder(1, width=8, stem="cifar"), out_dim=64, hidden_dim=64, bottleneck_dim=32)
    fresh.load_state_dict(m.state_dict())
    for name in ("encoder", "teacher_head", "student_encoder", "student_head"):
        for a, b in zip(getattr(m, name).state_dict().values(), getattr(fresh, name).state_dict().values()):
            assert torch.equal(a, b)
    assert torch.equal(fresh.centre, m.centre)
    fresh.eval()
    for method in (m, fresh):  # the schedules are not state: they follow the progress given by the loop
        method.on_train_step(1.0)
    with torch.no_grad():
        torch.manual_seed(3)
        a = m.training_loss(images[:4])["loss"]
        torch.manual_seed(3)
        assert torch.equal(fresh.training_loss(images[:4])["loss"], a)


def test_without_negatives_it_is_plain_dino() -> None:
    torch.manual_seed(0)
    terms = small_method(negative_weight=0.0).training_loss(torch.rand(3, 1, 16, 16))
    assert "loss_neg" not in terms and torch.equal(terms["loss"].detach(), terms["loss_pos"])


def test_without_local_views_l_pos_pairs_the_two_global_views() -> None:
    """The default (n_local = n_local_negatives = 0): L_pos is the cross-entropy between each
    teacher global view and the student's other global view, nothing else (negatives in their own
    BatchNorm batches here, so that the direct computation below sees the same statistics)."""
    m = small_method(n_local=0, n_local_negatives=0, negative_batches="separate")
    x = torch.rand(4, 1, 16, 16)
    torch.manual_seed(2)
    terms = m.training_loss(x)
    torch.manual_seed(2)
    full = [m.views.global_view(x, i) for i in range(2)]
    with torch.no_grad():
        teacher = m.teacher_head(m.encoder(torch.cat(full))).view(2, 4, -1)
        student = m.student(full, 4)
    p_t = torch.softmax(teacher / m.teacher_temp, -1)  # the centre is still 0 before the first call
    log_p_s = torch.log_softmax(student / m.params.student_temp, -1)
    direct = -((p_t[0] * log_p_s[1]).sum(-1).mean() + (p_t[1] * log_p_s[0]).sum(-1).mean()) / 2
    assert terms["loss_pos"].item() == pytest.approx(direct.item(), rel=1e-5)
    assert "loss_neg" in terms and terms["loss_neg"] >= math.log(16) - 1e-5
    assert DinoNegMethod.Params().n_local == 0 and DinoNegMethod.Params().n_local_negatives == 0


def test_auxiliary_images_become_negatives(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / f"aux{i}.png")
    m = small_method(aux_path=str(tmp_path), aux_fraction=1.0, aux_shift=False)
    x = torch.rand(5, 1, 16, 16)
    negatives = m.negative_images(x)
    aux = m.aux_images(x)
    assert aux.shape == (3, 1, 16, 16)
    assert all(any(torch.equal(row, a) for a in aux) for row in negatives)
    shifted = small_method(aux_path=str(tmp_path), aux_fraction=1.0, negatives=["pixel_shuffle"]).negative_images(x)
    assert not any(torch.equal(row, a) for row in shifted for a in aux)
    # the run's preprocessing (the model's Preprocessor, set by fit) reaches the auxiliary images
    prepared = small_method(aux_path=str(tmp_path), aux_fraction=1.0, aux_shift=False)
    prepared.preprocessor = Preprocessor(image_size=16, channels=1, intensity="minmax")
    assert torch.allclose(prepared.aux_images(x), normalize_intensity(aux, "minmax"))


def test_params_are_validated_and_the_method_is_registered() -> None:
    with pytest.raises(ValidationError, match="unknown negative kinds"):
        small_method(negatives=["flip"])
    with pytest.raises(ValidationError, match="crop scale"):
        small_method(local_scale=(0.5, 0.2))
    has_bn = lambda m: any(isinstance(x, nn.BatchNorm1d) for x in m.student_head.modules())  # noqa: E731
    assert has_bn(small_method()) and not has_bn(small_method(head_bn=False))
    assert METHODS["dino_neg"] is DinoNegMethod
    m = build_method(MethodConfig(name="dino_neg", params={"out_dim": 32}), ToyEncoder())
    assert m.teacher_head.last_layer.out_features == 32


@pytest.mark.parametrize("batches, independent", [("separate", True), ("shared", False)])
def test_separate_negative_batches_keep_the_positive_views_batchnorm_to_themselves(batches, independent) -> None:
    """issue 14 item 11: with negative_batches=separate the student's BatchNorm (in its head here)
    normalises the positive views among themselves, so L_pos does not depend on the negatives."""
    torch.manual_seed(0)
    m = small_method(negative_batches=batches)
    x, centre = torch.rand(6, 1, 16, 16), m.centre.clone()
    losses = []
    for weight in (1.0, 0.0):  # with negatives, and with none drawn at all
        m.params = m.params.model_copy(update={"negative_weight": weight})
        m.centre.copy_(centre)
        torch.manual_seed(1)  # the same positive views (they are drawn before the negatives)
        losses.append(m.training_loss(x)["loss_pos"])
    assert torch.allclose(losses[0], losses[1]) == independent
