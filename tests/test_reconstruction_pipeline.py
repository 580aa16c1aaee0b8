"""Reconstruction detectors end to end: the Python API (no pre-training; ae, igd, fanogan) and one CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toys import TINY_DETECTOR_PARAMS  # tests/ is on sys.path
from typer.testing import CliRunner

from medad import AnomalyDetector
from medad.cli import app
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms

CFG = RunConfig.model_validate(
    {
        "data": {"image_size": 32, "val_fraction": 0.25},
        "encoder": {"width": 8},
        "train": {"epochs": 1, "batch_size": 8, "progress": False},
        "detector": {"params": {"epochs": 2, "batch_size": 8}},
    }
)


@pytest.fixture(scope="module")
def fitted() -> AnomalyDetector:
    normals, _ = make_phantoms(16, 32, seed=0)
    return AnomalyDetector(CFG, method="none", detector="ae").fit(normals)


def test_fit_scores_maps_and_names(fitted: AnomalyDetector) -> None:
    assert fitted.score_names() == ["ae"] and list(fitted.detectors_) == ["ae"]
    assert fitted.history_ == []  # method none: no pre-training loop
    det = fitted.detectors_["ae"]
    assert det.params.epochs == 2 and det.params.batch_size == 8 and det.input_shape.tolist() == [1, 32]
    test, _ = make_phantoms(4, 32, seed=1, lesion=True)
    scores = fitted.decision_function(test)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    maps = fitted.anomaly_map(test)
    assert maps.shape == (4, 32, 32) and (maps >= 0).all()
    assert np.allclose(maps.reshape(4, -1).mean(1), scores, rtol=1e-5)
    assert fitted.threshold_ is not None and fitted.pixel_threshold_ is not None


def test_save_load_round_trip(fitted: AnomalyDetector, tmp_path) -> None:
    test, _ = make_phantoms(4, 32, seed=2, lesion=True)
    fitted.save(tmp_path / "m")
    loaded = AnomalyDetector.load(tmp_path / "m")
    assert loaded.score_names() == ["ae"]
    assert np.array_equal(loaded.decision_function(test), fitted.decision_function(test))
    assert np.array_equal(loaded.anomaly_map(test), fitted.anomaly_map(test))
    assert loaded.threshold_ == fitted.threshold_
    assert torch.equal(loaded.detectors_["ae"].input_shape, fitted.detectors_["ae"].input_shape)


def test_cli_train_with_an_autoencoder(tmp_path) -> None:
    runner = CliRunner()
    data, run = tmp_path / "data", tmp_path / "run"
    result = runner.invoke(app, ["synth", "--out", str(data), "--size", "32", "--n-train", "16",
                                 "--n-test-normal", "4", "--n-test-abnormal", "4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--method", "none",
                                 "--detector", "ae", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                                 "--no-progress", "--set", "detector.params.epochs=2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["detector"] == "ae" and metrics["score_names"] == ["ae"]
    assert "image_auroc" in metrics and metrics["image_score_from_map"] == "mean"


@pytest.mark.parametrize("name", ["igd", "fanogan"])
def test_api_method_none_fit_score_save_load(name, tmp_path) -> None:
    cfg = RunConfig.model_validate({
        "data": {"image_size": 32, "val_fraction": 0.25},
        "encoder": {"width": 8},
        "train": {"epochs": 1, "batch_size": 8, "progress": False},
        "detector": {"name": name, "params": TINY_DETECTOR_PARAMS[name]},
    })
    normals, _ = make_phantoms(8, 32, seed=0)
    test, _ = make_phantoms(3, 32, seed=3, lesion=True)
    model = AnomalyDetector(cfg, method="none", detector=name).fit(normals)
    scores = model.decision_function(test)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert model.anomaly_map(test).shape == (3, 32, 32)
    model.save(tmp_path / "m")
    loaded = AnomalyDetector.load(tmp_path / "m")
    assert np.allclose(loaded.decision_function(test), scores, atol=1e-6)


@pytest.mark.parametrize("name, params, pretrains", [
    ("igd", {}, True), ("fanogan", {}, True), ("fanogan", {"encoder_init": "scratch"}, False), ("ae", {}, False)])
def test_a_trained_method_is_pre_trained_when_the_detector_starts_from_its_encoder(name, params, pretrains) -> None:
    """IGD and f-AnoGAN (``encoder_init: medad``) fine-tune a copy of the encoder, as CCD and
    PMSACL use IGD: the method must train first; an autoencoder reads no encoder, so it need not."""
    cfg = RunConfig.model_validate({
        "data": {"image_size": 32, "val_fraction": 0.25},
        "encoder": {"width": 8},
        "train": {"epochs": 1, "batch_size": 4, "progress": False},
        "detector": {"name": name, "params": {**TINY_DETECTOR_PARAMS.get(name, {"epochs": 1}), **params}},
    })
    normals, _ = make_phantoms(8, 32, seed=0)
    model = AnomalyDetector(cfg, method="contrastive", detector=name).fit(normals)
    assert len(model.history_) == (1 if pretrains else 0)
    # beside such a detector the embedding scores read the pre-trained encoder (detector.also: auto)
    assert ("mahalanobis" in model.score_names()) == pretrains
    if name == "igd":  # with a vanishing learning rate IGD's copy keeps the pre-trained weights
        cfg.detector.params["lr"] = 1e-12
        model = AnomalyDetector(cfg, method="contrastive", detector=name).fit(normals)
        trained = dict(model.encoder_.named_parameters())
        for key, p in model.detectors_["igd"].global_model.encoder.named_parameters():
            assert torch.allclose(p, trained[key], atol=1e-6), key


@pytest.mark.parametrize("detector", ["ae", "ae_u"])
def test_autoencoders_localise_synthetic_lesions(detector: str) -> None:
    """Trained on lesion-free phantoms only, the reconstruction error map points at the lesions
    (pixel AUROC 0.85 / 0.89 when written; a broken map or loss lands near 0.5)."""
    from sklearn.metrics import roc_auc_score

    cfg = RunConfig.model_validate({"data": {"image_size": 32, "val_fraction": 0.2}, "train": {"progress": False},
                                    "detector": {"params": {"epochs": 40, "batch_size": 16}}})
    normals, _ = make_phantoms(80, 32, seed=0)
    lesions, masks = make_phantoms(20, 32, seed=2, lesion=True)
    model = AnomalyDetector(cfg, method="none", detector=detector).fit(normals)
    maps = model.anomaly_map(lesions)
    assert roc_auc_score(masks.numpy().reshape(-1) > 0, maps.reshape(-1)) > 0.75
