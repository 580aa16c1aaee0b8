"""The scikit-learn / PyOD-style Python API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import medad.model
from medad import AnomalyDetector, NotFittedError
from medad.config import MethodConfig, RunConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.base import NonFiniteFeatures
from medad.evaluation.calibration import normal_quantile
from medad.methods.none import NoPretraining

CFG = RunConfig.model_validate(
    {
        "data": {"image_size": 32, "val_fraction": 0.25},
        "encoder": {"width": 8},
        "train": {"epochs": 1, "batch_size": 8, "progress": False},
    }
)


@pytest.fixture(scope="module")
def fitted():
    normals, _ = make_phantoms(24, 32, seed=0)
    return AnomalyDetector(CFG, detector="nnd").fit(normals)


def test_scores_predictions_and_threshold(fitted):
    test, _ = make_phantoms(6, 32, seed=1, lesion=True)
    scores = fitted.decision_function(test)
    assert scores.shape == (6,) and np.isfinite(scores).all()
    assert np.array_equal(fitted.score(test), scores)
    assert set(fitted.predict(test)) <= {0, 1}
    assert fitted.threshold_ is not None and fitted.threshold_rule_ == "val_normal_q0.95"
    assert list(fitted.score_all(test)) == ["nnd", "mahalanobis", "lh", "cosine"]


def test_predict_proba_is_the_share_of_validation_normals_scoring_lower(fitted):
    test, _ = make_phantoms(6, 32, seed=1, lesion=True)
    proba = fitted.predict_proba(test)
    scores = fitted.decision_function(test)
    val = np.asarray(fitted.val_scores_)
    expected = [((val < s).sum() + 0.5 * (val == s).sum()) / len(val) for s in scores]
    assert proba.shape == (6, 2) and np.allclose(proba[:, 1], expected) and np.allclose(proba.sum(1), 1)
    assert (np.diff(proba[np.argsort(scores), 1]) >= 0).all()  # monotone in the score
    # the lowest score flagged abnormal lies above the interpolated q0.95 of the validation normals, so above
    # at least floor(0.95 (n - 1)) + 1 of them (5 of 6 here): its calibrated score is at least that share
    flagged = np.nextafter(fitted.threshold_, np.inf)
    assert normal_quantile([flagged], val)[0] >= (np.floor(0.95 * (len(val) - 1)) + 1) / len(val)
    with pytest.raises(NotFittedError, match="validation"):
        AnomalyDetector(CFG).predict_proba(test)


def test_sklearn_clone_gives_an_unfitted_copy_with_the_same_settings(fitted):
    from sklearn.base import clone

    copy = clone(fitted)
    assert copy.config == fitted.config and copy.encoder_ is None and copy.threshold_ is None
    assert copy.set_params(epochs=3, detector="mahalanobis") is copy
    assert (copy.config.train.epochs, copy.primary) == (3, "mahalanobis") and fitted.config.train.epochs == 1
    assert copy.get_params() == {"config": copy.config}


def test_accepts_uint8_arrays_and_other_sizes(fitted):
    test, _ = make_phantoms(3, 48, seed=2)
    as_uint8 = (test[:, 0].numpy() * 255).round().astype(np.uint8)  # [N, H, W] uint8, 48 px
    assert fitted.decision_function(as_uint8).shape == (3,)


def test_save_load_round_trip(fitted, tmp_path):
    test, _ = make_phantoms(4, 32, seed=3, lesion=True)
    fitted.save(tmp_path / "m")
    loaded = AnomalyDetector.load(tmp_path / "m")
    assert loaded.threshold_ == fitted.threshold_
    for name, out in fitted.score_all(test).items():
        assert torch.allclose(loaded.score_all(test)[name].scores, out.scores, rtol=1e-5, atol=1e-6)


def test_unfitted_and_bad_input_errors(fitted):
    with pytest.raises(NotFittedError):
        AnomalyDetector(CFG).decision_function(torch.rand(2, 1, 32, 32))
    bad = torch.rand(2, 1, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fitted.decision_function(bad)
    with pytest.raises(ValueError, match="no anomaly maps"):
        fitted.anomaly_map(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="unknown option"):
        AnomalyDetector(CFG, epoch=3)


def test_fit_scores_refits_on_a_replaced_encoder(fitted, tmp_path):
    normals, _ = make_phantoms(24, 32, seed=0)
    test, _ = make_phantoms(4, 32, seed=4, lesion=True)
    with pytest.raises(NotFittedError):
        AnomalyDetector(CFG).fit_scores(normals, normals[:4])
    fitted.save(tmp_path / "m")
    other = AnomalyDetector.load(tmp_path / "m")
    before = other.decision_function(test)
    torch.nn.init.normal_(other.encoder_.conv1.weight)  # another encoder, as from another checkpoint
    other.fit_scores(normals[6:], normals[:6])
    after = other.decision_function(test)
    assert not np.allclose(before, after)
    assert other.n_train_ == 18 and len(other.val_scores_) == 6 and other.threshold_ != fitted.threshold_


def test_method_none_skips_pretraining():
    normals, _ = make_phantoms(12, 32, seed=0)
    det = AnomalyDetector(CFG, method="none", detector="mahalanobis").fit(normals)
    assert det.history_ == [] and det.selected_epoch is None
    untrained = AnomalyDetector(CFG, method="none").fit(normals)  # same seed: the same random encoder
    for a, b in zip(det.encoder_.parameters(), untrained.encoder_.parameters()):
        assert torch.equal(a, b)


def test_view_settings_of_the_primary_score_reach_every_embedding_score(tmp_path):
    normals, _ = make_phantoms(24, 32, seed=0)
    test, _ = make_phantoms(4, 32, seed=1, lesion=True)
    det = AnomalyDetector(CFG, method="none", detector="nnd")
    det.config.detector.params = {"k": 2, "contexts": ["flip"], "tta": 1}
    det.fit(normals)
    assert det.detectors_["nnd"].params.k == 2
    for name in ("mahalanobis", "lh", "cosine"):  # CON2 eq. 16 for every column, not only the primary
        assert det.detectors_[name].params.contexts == ["flip"] and det.detectors_[name].params.tta == 1
    again = AnomalyDetector.load(det.save(tmp_path / "m"))
    for name, out in det.score_all(test).items():
        assert torch.allclose(again.score_all(test)[name].scores, out.scores)


@pytest.mark.parametrize("method, hint", [
    ("contrastive", r"lower the learning rate \(train.lr / --lr, now 0.001\) or check the input images$"),
    ("none", r"NaN/Inf embeddings for 18 of 18 images; check the input images$"),
])
def test_nan_embeddings_say_what_to_suspect(monkeypatch, method, hint):
    """Embeddings that come out NaN after pre-training point at its learning rate; without
    pre-training, at the images."""

    def diverged(method, *args, **kwargs):  # what a huge learning rate leaves behind
        for p in method.encoder.parameters():
            p.data.fill_(float("nan"))
        return []

    monkeypatch.setattr(medad.model, "train_method", diverged)
    monkeypatch.setattr(NoPretraining, "calibrate", lambda self, images: diverged(self))
    with pytest.raises(NonFiniteFeatures, match=hint):
        AnomalyDetector(CFG, method=method, detector="nnd").fit(make_phantoms(24, 32, seed=0)[0])


def test_params_are_checked_when_the_detector_is_configured():
    with pytest.raises(ValidationError) as info:
        AnomalyDetector(CFG, detector="nnd", method="contrastive").set_params(
            config=CFG.model_copy(update={"method": MethodConfig(params={"temperature": -1})}))
    assert [e["loc"] for e in info.value.errors()] == [("method", "params", "temperature")]
    with pytest.raises(ValidationError, match=r"detector.also.0.params.epochs"):
        AnomalyDetector(RunConfig.model_validate({"detector": {"also": [{"name": "dae", "params": {"epochs": 0}}]}}))
