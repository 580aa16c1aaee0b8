"""Score fusion (``detector.fuse``): scores standardised on validation normals, then averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.fusion import fit_fusion, fuse_scores
from medad.export import ExportError, check_exportable

CFG = {
    "data": {"image_size": 32, "val_fraction": 0.25},
    "encoder": {"width": 8},
    "method": {"name": "none"},
    "train": {"epochs": 0, "progress": False},
    "detector": {"name": "mahalanobis",
                 "also": ["nnd", {"name": "intensity", "params": {"polarity": "bright", "reduction": "mean"}}],
                 "fuse": ["mahalanobis", "intensity"]},
}


def test_fused_score_is_the_mean_of_the_standardised_scores():
    val = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([-100.0, 0.0, 100.0])}
    stats = fit_fusion(val)
    assert stats["a"] == pytest.approx((2.0, (2 / 3) ** 0.5)) and stats["b"][0] == pytest.approx(0.0)
    test = {"a": torch.tensor([2.0, 4.0]), "b": torch.tensor([0.0, 50.0]), "c": torch.tensor([9.0, 9.0])}
    expected = [(0 + 0) / 2, ((4 - 2) / (2 / 3) ** 0.5 + 50 / stats["b"][1]) / 2]
    assert fuse_scores(test, stats).tolist() == pytest.approx(expected)  # "c" is not fused
    assert fuse_scores(val, stats).mean().item() == pytest.approx(0.0, abs=1e-12)  # centred on the normals
    with pytest.raises(ValueError, match="constant"):
        fit_fusion({"a": torch.ones(4)})
    with pytest.raises(ValueError, match="2 validation normals"):
        fit_fusion({"a": torch.ones(1)})


@pytest.mark.parametrize("detector, message", [
    ({"also": ["nnd"], "fuse": ["mahalanobis", "dae"]}, "neither detector.name nor in detector.also"),
    ({"also": ["nnd"], "fuse": ["nnd"]}, "at least two"),
    ({"also": ["nnd"], "fuse": ["nnd", "nnd"]}, "at least two"),
    ({"name": "fusion"}, "name of the fused score"),
])
def test_config_refuses_fusions_that_cannot_be_built(detector, message):
    with pytest.raises(ValidationError, match=message):
        RunConfig.model_validate({"detector": detector})


@pytest.fixture(scope="module")
def fused():
    normals, _ = make_phantoms(24, 32, seed=0)
    return AnomalyDetector(RunConfig.model_validate(CFG)).fit(normals)


def test_model_fuses_its_scores_and_thresholds_the_fusion(fused, tmp_path):
    assert fused.primary == "fusion" and fused.fitted_scores == ["mahalanobis", "nnd", "intensity", "fusion"]
    assert fused.detectors_["intensity"].params.reduction == "mean"  # the params given in `also`
    # standardised on the validation normals: their fused scores are centred, the threshold is on them
    assert np.mean(fused.val_scores_) == pytest.approx(0.0, abs=1e-9)
    assert fused.threshold_ == pytest.approx(np.quantile(fused.val_scores_, 0.95))
    test, _ = make_phantoms(6, 32, seed=1, lesion=True)
    out = fused.score_all(test)
    expected = np.mean([(out[n].scores.numpy() - m) / s for n, (m, s) in fused.fusion_.items()], axis=0)
    assert np.allclose(fused.decision_function(test), expected) and out["fusion"].maps is None
    assert list(fused.score_all(test, ["fusion"])) == ["fusion"]  # its parts are scored, not returned
    with pytest.raises(ExportError, match="fused"):
        check_exportable(fused)
    fused.save(tmp_path)
    loaded = AnomalyDetector.load(tmp_path)
    assert loaded.primary == "fusion"
    assert np.array_equal(loaded.decision_function(test), fused.decision_function(test))


def test_fusion_needs_validation_normals():
    normals, _ = make_phantoms(12, 32, seed=0)
    cfg = RunConfig.model_validate({**CFG, "data": {"image_size": 32, "val_fraction": 0.0}})
    with pytest.raises(ValueError, match="validation normals"):
        AnomalyDetector(cfg).fit(normals)
