"""The training loop: determinism, atomic checkpoints, resume and clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.config import TrainConfig
from medad.methods.base import PretrainMethod
from medad.train.checkpoint import load_checkpoint, save_checkpoint
from medad.train.loop import epoch_batches, train_method


class NoisyRegression(PretrainMethod):
    """A tiny method whose loss uses the global RNG, like augmentation-based methods do."""

    name = "noisy"

    def training_loss(self, images):
        x = images.flatten(1)
        noise = 0.1 * torch.randn_like(x)
        return {"loss": (self.encoder(x + noise) - x.sum(1, keepdim=True)).pow(2).mean()}


def _method(seed: int = 0) -> NoisyRegression:
    torch.manual_seed(seed)
    return NoisyRegression(torch.nn.Linear(4, 1))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 4, "lr": 0.05, "progress": False, **kw})


def test_loss_decreases_and_history_is_recorded():
    torch.manual_seed(1)
    data, val = torch.rand(16, 1, 2, 2), torch.rand(8, 1, 2, 2)
    history = train_method(_method(), data, val, _cfg(epochs=6))
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert all("val_loss" in h and h["images_per_second"] > 0 for h in history)


def test_warmup_ramps_the_learning_rate_then_decays_it():
    data = torch.rand(16, 1, 2, 2)
    history = train_method(_method(), data, None, _cfg(epochs=6, warmup_epochs=2))
    lrs = [h["lr"] for h in history]
    assert lrs == pytest.approx([0.05 * f for f in (1 / 3, 2 / 3, 1.0, 0.8536, 0.5, 0.1464)], rel=1e-3)
    plain = [h["lr"] for h in train_method(_method(), data, None, _cfg(epochs=6))]
    assert plain[0] == pytest.approx(0.05) and plain == sorted(plain, reverse=True)  # no warm-up by default


def test_same_seed_same_weights():
    data = torch.rand(16, 1, 2, 2)
    a, b = _method(), _method()
    torch.manual_seed(3)
    train_method(a, data, None, _cfg())
    torch.manual_seed(3)
    train_method(b, data, None, _cfg())
    assert torch.equal(a.encoder.weight, b.encoder.weight)


class Interrupted(NoisyRegression):
    """Raises KeyboardInterrupt on its ``stop_after``-th batch, like a user pressing Ctrl-C."""

    def __init__(self, encoder, stop_after: int):
        super().__init__(encoder)
        self.calls, self.stop_after = 0, stop_after

    def training_loss(self, images):
        self.calls += 1
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        return super().training_loss(images)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = torch.rand(16, 1, 2, 2)
    straight = _method()
    torch.manual_seed(5)
    train_method(straight, data, None, _cfg())

    torch.manual_seed(0)
    interrupted = Interrupted(torch.nn.Linear(4, 1), stop_after=10)  # 4 batches/epoch: dies in epoch 3
    torch.manual_seed(5)
    ckpt = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        train_method(interrupted, data, None, _cfg(), checkpoint_path=ckpt, fingerprint="f")
    assert load_checkpoint(ckpt)[1]["epoch"] == 2
    resumed = _method(seed=99)  # fresh weights: everything must come from the checkpoint
    torch.manual_seed(1234)  # and the RNG state too
    history = train_method(resumed, data, None, _cfg(), checkpoint_path=ckpt, resume=True, fingerprint="f")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert torch.equal(resumed.encoder.weight, straight.encoder.weight)


def test_resume_refuses_another_config(tmp_path):
    data = torch.rand(8, 1, 2, 2)
    ckpt = tmp_path / "last.pt"
    train_method(_method(), data, None, _cfg(epochs=1), checkpoint_path=ckpt, fingerprint="a")
    with pytest.raises(ValueError, match="another config"):
        train_method(_method(), data, None, _cfg(), checkpoint_path=ckpt, resume=True, fingerprint="b")


def test_non_finite_loss_is_a_clear_error():
    data = torch.rand(8, 1, 2, 2)
    data[0, 0, 0, 0] = float("nan")
    hint = r"lower the learning rate \(train.lr / --lr, now 0.05\) or check the input images"
    with pytest.raises(FloatingPointError, match=f"loss became nan at epoch 1; {hint}"):
        train_method(_method(), data, None, _cfg(epochs=1, batch_size=8))


class DivergingStatistic(NoisyRegression):
    """A finite loss beside a buffer that overflows in epoch 2, as BatchNorm statistics or an EMA
    teacher do at a huge learning rate."""

    def __init__(self, encoder):
        super().__init__(encoder)
        self.register_buffer("running", torch.zeros(1))
        self.steps = 0

    def after_optimizer_step(self):
        self.steps += 1
        if self.steps > 2:
            self.running.fill_(float("inf"))


def test_weights_that_diverge_under_a_finite_loss_stop_training_before_their_checkpoint(tmp_path):
    ckpt = tmp_path / "last.pt"
    with pytest.raises(FloatingPointError, match=r"the weights \(running\) became NaN/Inf in epoch 2 while the "
                                                 r"loss stayed finite; lower the learning rate \(train.lr / --lr"):
        train_method(DivergingStatistic(torch.nn.Linear(4, 1)), torch.rand(8, 1, 2, 2), None,
                     _cfg(epochs=3, batch_size=4), checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)[1]["epoch"] == 1  # the last finite state, not the diverged one


def test_too_few_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        train_method(_method(), torch.rand(1, 1, 2, 2), None, _cfg())


def test_epoch_batches_drop_a_short_last_batch_and_shard():
    batches = epoch_batches(10, 4, seed=0, epoch=1)
    assert [len(b) for b in batches] == [4, 4]
    shards = [torch.cat(epoch_batches(10, 5, 0, 1, rank=r, world=2)) for r in range(2)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(3.0)}, {"epoch": 1})
    save_checkpoint(path, {"w": torch.arange(4.0)}, {"epoch": 2})
    state, meta = load_checkpoint(path)
    assert state["w"].tolist() == [0.0, 1.0, 2.0, 3.0] and meta == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.pt"]  # no temp files left


class Hooked(NoisyRegression):
    """Records the hook calls the loop makes."""

    def __init__(self, encoder):
        super().__init__(encoder)
        self.progress: list[float] = []
        self.steps_after = 0

    def on_train_step(self, progress):
        self.progress.append(progress)

    def after_optimizer_step(self):
        self.steps_after += 1


def test_loop_calls_the_method_hooks_in_order():
    method = Hooked(torch.nn.Linear(4, 1))
    train_method(method, torch.rand(8, 1, 2, 2), None, _cfg(epochs=2, batch_size=4))
    assert method.progress == [0.0, 0.25, 0.5, 0.75]
    assert method.steps_after == 4


class FakeSensitivity:
    """Returns the given scores in turn, with a fixed standard error, and snapshots the encoder."""

    def __init__(self, values, se):
        self.values, self.se, self.snapshots = iter(values), se, {}

    def __call__(self, encoder):
        self.snapshots[len(self.snapshots) + 1] = encoder.weight.detach().clone()
        return next(self.values)

    def standard_error(self, value):
        return self.se


@pytest.mark.parametrize("se, chosen", [(0.01, 2), (0.2, 4)])
def test_selection_by_sensitivity_leaves_the_last_epoch_only_for_a_clear_gain(tmp_path, se, chosen):
    """The score peaks at epoch 2 (0.7 vs 0.52 at the end): a gain of 0.18, i.e. 12.7 standard errors
    of the difference with SE 0.01 (epoch 2 is restored) but 0.64 with SE 0.2 (the last epoch stays)."""
    score = FakeSensitivity([0.55, 0.7, 0.6, 0.52], se)
    method = _method()
    history = train_method(method, torch.rand(16, 1, 2, 2), torch.rand(4, 1, 2, 2),
                           _cfg(select_by="sensitivity"), checkpoint_path=tmp_path / "last.pt", sensitivity=score)
    assert [h["sensitivity"] for h in history] == [0.55, 0.7, 0.6, 0.52]
    assert [h["sensitivity_se"] for h in history] == [se] * 4
    assert [h["selected"] for h in history] == [h["epoch"] == chosen for h in history]
    assert torch.equal(method.encoder.weight, score.snapshots[chosen])
    assert load_checkpoint(tmp_path / "best.pt")[1]["epoch"] == 2  # the best-scoring checkpoint is kept either way


def test_selection_margin_zero_takes_the_highest_score():
    score = FakeSensitivity([0.55, 0.7, 0.6, 0.52], 0.2)
    method = _method()
    history = train_method(method, torch.rand(16, 1, 2, 2), torch.rand(4, 1, 2, 2),
                           _cfg(select_by="sensitivity", select_margin=0.0), sensitivity=score)
    assert [h["epoch"] for h in history if h["selected"]] == [2]
    assert torch.equal(method.encoder.weight, score.snapshots[2])


def test_selection_needs_a_sensitivity_score():
    with pytest.raises(ValueError, match="validation normals"):
        train_method(_method(), torch.rand(8, 1, 2, 2), None, _cfg(select_by="sensitivity"))


def test_auroc_standard_error_matches_hanley_mcneil():
    """Eq. 2 of Hanley & McNeil evaluated by hand, its 1/sqrt(n) law and its limits."""
    from medad.train.selection import auroc_standard_error

    assert auroc_standard_error(0.5, 50, 50) == pytest.approx(2 ** 0.5 * auroc_standard_error(0.5, 100, 100), rel=0.02)
    assert auroc_standard_error(1.0, 30, 30) == 0.0
    # direct evaluation of eq. 2 for A = 0.8, 40 positives, 60 negatives
    q1, q2 = 0.8 / 1.2, 2 * 0.64 / 1.8
    expected = ((0.8 * 0.2 + 39 * (q1 - 0.64) + 59 * (q2 - 0.64)) / 2400) ** 0.5
    assert auroc_standard_error(0.8, 40, 60) == pytest.approx(expected)
    with pytest.raises(ValueError, match="both classes"):
        auroc_standard_error(0.5, 0, 10)


def test_auroc_standard_error_matches_the_spread_of_a_null_auroc():
    """Under no difference the AUROC's spread over resamples is what the formula predicts."""
    from sklearn.metrics import roc_auc_score

    from medad.train.selection import auroc_standard_error

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(64), np.ones(57)]
    aurocs = [roc_auc_score(labels, rng.normal(size=121)) for _ in range(2000)]
    assert np.std(aurocs) == pytest.approx(auroc_standard_error(0.5, 57, 64), rel=0.1)


def test_sensitivity_score_is_an_auroc_of_held_out_training_vs_validation_normals():
    from medad.detectors.sensitivity import SensitivityScore

    torch.manual_seed(0)
    train = torch.rand(40, 1, 4, 4)
    same = SensitivityScore(train, torch.rand(40, 1, 4, 4), holdout=20)(torch.nn.Flatten())
    other = torch.rand(40, 1, 4, 4)
    other[:, :, :2] = 0  # half of every image blank: other directions, low cosine to the training set
    shifted = SensitivityScore(train, other, holdout=20)(torch.nn.Flatten())
    assert 0.3 < same < 0.7  # validation normals look like the training normals
    assert shifted > 0.9  # validation images unlike the training set are rejected
