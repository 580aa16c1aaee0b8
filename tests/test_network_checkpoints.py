"""Detectors' own networks are checkpointed once trained and resumed after an interruption."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import medad.train.networks as networks
from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.registry import build_detector
from medad.train.networks import LoopCheckpoint, network_checkpoints, train_network

from toys import TINY_DETECTOR_PARAMS  # tests/ is on sys.path


def _fit(net: nn.Module, calls: list[int], name: str = "net", epochs: int = 3) -> list[float]:
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(0))

    def loss(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return (net(batch) - batch.sum(1, keepdim=True)).pow(2).mean()

    return train_network(net, x, loss, epochs=epochs, lr=0.05, batch_size=8, seed=0, name=name)


def test_trained_networks_are_saved_and_loaded_on_resume(tmp_path) -> None:
    calls: list[int] = []
    first, second = nn.Linear(2, 1), nn.Linear(2, 1)
    with network_checkpoints(tmp_path, "abc"):
        losses = _fit(first, calls, "ddad NDM[0]")
        _fit(second, calls, "ddad NDM[1]")
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["01-ddad_NDM_0.pt", "02-ddad_NDM_1.pt"]
    trained = len(calls)
    fresh = nn.Linear(2, 1)
    with network_checkpoints(tmp_path, "abc", resume=True):
        assert _fit(fresh, calls, "ddad NDM[0]") == losses
    assert len(calls) == trained  # loaded, not trained
    assert torch.equal(fresh.weight, first.weight) and not fresh.training


@pytest.mark.parametrize("change", ["fingerprint", "epochs", "corrupt", "no metadata", "no resume"])
def test_a_network_saved_under_other_settings_is_trained_again(tmp_path, caplog, change) -> None:
    calls: list[int] = []
    with network_checkpoints(tmp_path, "abc"):
        _fit(nn.Linear(2, 1), calls)
    if change == "corrupt":
        (tmp_path / "01-net.pt").write_bytes(b"not a checkpoint")
    if change == "no metadata":  # killed between writing the tensors and their .json
        (tmp_path / "01-net.json").unlink()
    fingerprint = "other" if change == "fingerprint" else "abc"
    epochs = 4 if change == "epochs" else 3
    before = len(calls)
    with caplog.at_level(logging.WARNING, logger="medad"), \
            network_checkpoints(tmp_path, fingerprint, resume=change != "no resume"):
        _fit(nn.Linear(2, 1), calls, epochs=epochs)
    assert len(calls) > before
    if change != "no resume":
        assert "training it again" in caplog.text


def test_an_interrupted_ddad_fit_resumes_where_it_stopped(tmp_path, monkeypatch) -> None:
    normals, _ = make_phantoms(16, 16, seed=0)
    cfg = RunConfig.model_validate({
        "data": {"image_size": 16},
        "detector": {"params": {"ensemble": 2, "epochs": 2, "asr_epochs": 2, "batch_size": 8, "latent": 4,
                                "hidden": 16, "asr_width": 4, "refine": True}},
        "train": {"epochs": 0, "progress": False},
    })
    checkpoint = tmp_path / "checkpoints" / "last.pt"

    def fit(resume: bool) -> AnomalyDetector:
        model = AnomalyDetector(cfg, method="none", detector="ddad")
        return model.fit(normals[:12], normals[12:], checkpoint_path=checkpoint, resume=resume, fingerprint="f")

    reference = fit(resume=False).decision_function(normals)
    trained: list[str] = []
    real = networks.train_network

    def interrupted_after_two(module, images, loss_fn, **kw):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(kw["name"])
        return real(module, images, loss_fn, **kw)

    monkeypatch.setattr("medad.detectors.ddad.train_network", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(resume=False)
    assert trained == ["ddad NDM[0]", "ddad NDM[1]"]

    trained_again: list[str] = []

    def recording(module, images, loss_fn, **kw):
        def loss(batch):
            if kw["name"] not in trained_again:
                trained_again.append(kw["name"])
            return loss_fn(batch)

        return real(module, images, loss, **kw)

    monkeypatch.setattr("medad.detectors.ddad.train_network", recording)
    scores = fit(resume=True).decision_function(normals)
    assert trained_again == ["ddad ASR-Net"]  # the two NDM members were loaded
    assert torch.allclose(torch.as_tensor(scores), torch.as_tensor(reference))


def test_a_saved_network_that_does_not_fit_is_a_clear_error(tmp_path) -> None:
    with network_checkpoints(tmp_path, "abc"):
        _fit(nn.Linear(2, 1), [])
    bigger = nn.Sequential(nn.Linear(2, 1))  # same name, epochs and fingerprint, other layout
    with network_checkpoints(tmp_path, "abc", resume=True), pytest.raises(ValueError, match="does not fit"):
        _fit(bigger, [])


@pytest.mark.parametrize("name", ["igd", "fanogan"])
def test_an_interrupted_adversarial_loop_resumes_after_its_last_epoch(tmp_path, monkeypatch, name) -> None:
    """IGD's and the f-AnoGAN GAN's own loops save every epoch; a fit killed after epoch 1 continues
    at epoch 2 and ends with the same detector as an uninterrupted fit."""
    module = {"igd": "medad.detectors.igd", "fanogan": "medad.detectors.fanogan"}[name]
    params = {**TINY_DETECTOR_PARAMS[name], "epochs": 3}
    normals, _ = make_phantoms(8, 16, seed=0)
    folder = tmp_path / "networks"

    def fit(resume: bool):
        with network_checkpoints(folder, "f", resume=resume):
            return build_detector(name, params).fit(normals, None)

    reference = fit(resume=False).score(normals, None).scores
    saved_epochs: list[int] = []

    class KilledAfterEpochOne(LoopCheckpoint):
        def save(self, **counters: int) -> None:
            super().save(**counters)
            saved_epochs.append(counters["epoch"])
            if counters["epoch"] == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.LoopCheckpoint", KilledAfterEpochOne)
    with pytest.raises(KeyboardInterrupt):
        fit(resume=False)
    saved_epochs.clear()
    resumed = fit(resume=True)
    assert saved_epochs == [2, 3]  # epoch 1 was not trained again
    assert torch.allclose(resumed.score(normals, None).scores, reference)
