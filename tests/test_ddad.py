"""DDAD: discrepancy scores, focal loss, foreign-patch interpolation, the detector and its API use."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medad import AnomalyDetector
from medad.augment.fpi import foreign_patch_interpolation, patch_masks
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.detectors.ddad import (
    RAW_SIGNAL_FLOOR,
    DDADDetector,
    ensemble_sigma,
    focal_loss,
    inter_discrepancy,
    intra_discrepancy,
)
from medad.detectors.registry import build_detector
from medad.models.asr_net import ASRNet

TINY = {"ensemble": 2, "epochs": 1, "asr_epochs": 2, "batch_size": 8, "latent": 4, "hidden": 16, "asr_width": 4,
        "refine": True}


# -- pure functions -----------------------------------------------------------------------------
def test_intra_discrepancy_is_zero_when_the_ensemble_agrees() -> None:
    rec = torch.rand(3, 2, 8, 8)
    assert torch.equal(intra_discrepancy(torch.stack([rec, rec, rec])), torch.zeros(3, 8, 8))
    two = torch.stack([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)])
    assert torch.allclose(intra_discrepancy(two), torch.ones(1, 2, 2))  # population std (eq. 3)
    sigma = torch.full((1, 1, 2, 2), 4.0)
    assert torch.allclose(intra_discrepancy(two, sigma), torch.full((1, 2, 2), 0.25))  # eq. 6


def test_inter_discrepancy_is_zero_when_the_modules_agree() -> None:
    a = torch.rand(3, 2, 1, 8, 8)
    assert torch.equal(inter_discrepancy(a, a.clone()), torch.zeros(2, 8, 8))
    assert torch.allclose(inter_discrepancy(a, a.flip(0)), torch.zeros(2, 8, 8), atol=1e-6)  # same mean
    b = a + 0.5
    assert torch.allclose(inter_discrepancy(a, b), torch.full((2, 8, 8), 0.5))
    assert torch.allclose(inter_discrepancy(a, b, torch.full((2, 1, 8, 8), 2.0)), torch.full((2, 8, 8), 0.25))


def test_ensemble_sigma_is_the_mean_predicted_std() -> None:
    log_vars = torch.stack([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), np.log(9.0))])
    assert torch.allclose(ensemble_sigma(log_vars), torch.full((1, 1, 2, 2), 2.0))  # (1 + 3) / 2


def test_focal_loss_is_bce_at_gamma_zero_and_down_weights_easy_pixels() -> None:
    logits, target = torch.randn(2, 8, 8), (torch.rand(2, 8, 8) > 0.5).float()
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.binary_cross_entropy_with_logits(logits, target))
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])  # target 1: p = 0.98 vs 0.27
    one = torch.ones(1)
    ratio_easy = focal_loss(easy, one, 2.0) / F.binary_cross_entropy_with_logits(easy, one)
    ratio_hard = focal_loss(hard, one, 2.0) / F.binary_cross_entropy_with_logits(hard, one)
    p = torch.sigmoid(easy)
    assert torch.allclose(ratio_easy, (1 - p) ** 2) and ratio_easy < 0.001 < ratio_hard
    assert focal_loss(logits, target, 2.0) < focal_loss(logits, target, 0.0)


def test_fpi_changes_exactly_the_patch_with_the_alpha_blend() -> None:
    g = torch.Generator().manual_seed(0)
    x, f = torch.rand(16, 2, 32, 32, generator=g), torch.rand(16, 2, 32, 32, generator=g) + 2.0  # f never equals x
    out = foreign_patch_interpolation(x, f, generator=torch.Generator().manual_seed(1))
    changed = (out.images != x).any(1)
    inside = out.masks.bool()
    assert torch.equal(changed, inside & (out.alpha.view(-1, 1, 1) > 0))
    a = out.alpha.view(-1, 1, 1, 1)
    assert torch.allclose(out.images, torch.where(inside.unsqueeze(1), (1 - a) * x + a * f, x))
    assert set(out.masks.unique().tolist()) <= {0.0, 1.0} and ((out.alpha >= 0) & (out.alpha <= 1)).all()


def test_fpi_patch_geometry_and_default_foreign() -> None:
    masks = patch_masks(500, 40, torch.Generator().manual_seed(0))
    side = masks.amax(1).sum(1)  # width of each square patch (before clipping)
    assert side.min() >= 1 and side.max() <= 0.4 * 40 + 1
    rows = torch.arange(40).float() + 0.5
    centre_y = (masks.amax(2) * rows).sum(1) / masks.amax(2).sum(1)
    assert centre_y.min() > 0.0 and centre_y.max() < 40
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    out = foreign_patch_interpolation(x, generator=torch.Generator().manual_seed(3))  # foreign = other image
    assert torch.allclose(out.images[0, 0], out.masks[0] * out.alpha[0])
    with pytest.raises(ValueError, match="square"):
        foreign_patch_interpolation(torch.rand(2, 1, 8, 6))


def test_asr_net_shape() -> None:
    assert ASRNet(inputs=1, width=4)(torch.rand(2, 1, 16, 16)).shape == (2, 16, 16)


# -- detector -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    normals, _ = make_phantoms(12, 16, seed=0)
    pool, _ = make_phantoms(8, 16, seed=1, lesion=True)
    test, _ = make_phantoms(4, 16, seed=2, lesion=True)
    return normals, pool, test


@pytest.mark.parametrize("with_pool", [False, True])
def test_fit_score_save_load(data, with_pool) -> None:
    normals, pool, test = data
    det = build_detector("ddad", TINY).fit(normals, None, unlabeled=pool if with_pool else None)
    assert bool(det.dual) == with_pool and (det.udm is not None) == with_pool and det.asr.inputs == 1 + with_pool
    out = det.score(test, None)
    assert out.maps.shape == (4, 16, 16) and out.scores.shape == (4,) and torch.isfinite(out.scores).all()
    assert ((out.maps >= 0) & (out.maps <= 1)).all()  # σ(F(·))
    assert torch.allclose(out.scores.float(), out.maps.flatten(1).mean(1))
    fresh = build_detector("ddad", TINY)
    fresh.load_state_dict(det.state_dict())
    assert torch.equal(fresh.score(test, None).scores, out.scores)


def test_raw_maps_without_refinement_and_variant_fallback(data, caplog) -> None:
    normals, pool, test = data
    raw = build_detector("ddad", {**TINY, "refine": False, "backbone": "ae"}).fit(normals, None, unlabeled=pool)
    assert raw.asr is None and bool(raw.dual)
    x = test[:2]
    maps = raw.raw_maps(x)
    assert maps.shape == (2, 2, 16, 16) and torch.allclose(raw.score(x, None).maps, maps[:, 1])  # A_inter
    intra = build_detector("ddad", {**TINY, "variant": "intra", "refine": False}).fit(normals, None, unlabeled=pool)
    assert not bool(intra.dual) and intra.udm is None
    with caplog.at_level(logging.WARNING, logger="medad"):
        det = build_detector("ddad", {**TINY, "variant": "dual", "asr_epochs": 1}).fit(normals, None)
    assert not bool(det.dual) and "falling back to R_intra" in caplog.text


@pytest.mark.parametrize("signal", [0.5, 0.9])
def test_refine_auto_trains_the_asr_net_only_when_the_raw_maps_localise_fpi_anomalies(data, monkeypatch, caplog,
                                                                                      signal) -> None:
    normals, pool, test = data
    checked = []

    def fpi_aurocs(self, images, seed, refined=False):
        checked.append((len(images), seed, refined))
        return {"fpi_auroc_intra": signal - 0.1, "fpi_auroc_inter": signal}

    monkeypatch.setattr(DDADDetector, "fpi_aurocs", fpi_aurocs)
    with caplog.at_level(logging.WARNING, logger="medad"):
        det = build_detector("ddad", {**TINY, "refine": "auto"}).fit(normals, None, unlabeled=pool)
    assert checked == [(len(normals), det.params.seed + 3 * det.params.ensemble, False)]
    refined = signal >= RAW_SIGNAL_FLOOR
    assert bool(det.refined) == refined and (det.asr is not None) == refined
    assert det.map_name == ("R_dual" if refined else "A_inter")
    assert ("ASR-Net would learn the patch prior" in caplog.text) != refined
    out = det.score(test, None)
    if not refined:
        assert torch.allclose(out.maps, det.raw_maps(test)[:, 1])
    fresh = build_detector("ddad", {**TINY, "refine": "auto"})  # rebuilt with or without the net
    fresh.load_state_dict(det.state_dict())
    assert (fresh.asr is not None) == refined and torch.equal(fresh.score(test, None).scores, out.scores)
    assert build_detector("ddad", {**TINY, "refine": False}).fit(normals, None).asr is None and len(checked) == 1
    old = {k: v for k, v in det.state_dict().items() if k != "refined"}  # saved before the buffer existed
    legacy = build_detector("ddad", {**TINY, "refine": refined})
    legacy.load_state_dict(old)
    assert bool(legacy.refined) == refined and torch.equal(legacy.score(test, None).scores, out.scores)


def test_fpi_aurocs_of_a_real_fit_are_seeded_aurocs(data) -> None:
    normals, pool, _ = data
    det = build_detector("ddad", {**TINY, "refine": False}).fit(normals, None, unlabeled=pool)
    found = det.fpi_aurocs(normals, seed=4)
    assert set(found) == {"fpi_auroc_intra", "fpi_auroc_inter"} and all(0 <= v <= 1 for v in found.values())
    assert det.fpi_aurocs(normals, seed=4) == found


def test_diagnostics_measure_how_the_maps_localise_synthetic_anomalies(data, caplog, monkeypatch) -> None:
    normals, pool, _ = data
    det = build_detector("ddad", TINY).fit(normals, None, unlabeled=pool)
    found = det.diagnostics(normals)
    assert set(found) == {"fpi_auroc_intra", "fpi_auroc_inter", "fpi_auroc_refined"}
    assert all(0.0 <= v <= 1.0 for v in found.values())
    assert det.diagnostics(normals) == found  # seeded synthetic anomalies
    assert det.diagnostics(normals[:1]) == {}
    raw = build_detector("ddad", {**TINY, "refine": False, "variant": "intra"}).fit(normals, None)
    assert set(raw.diagnostics(normals)) == {"fpi_auroc_intra"}
    # raw maps that ignore the image cannot localise the patches: AUROC near 0.5 and a warning
    monkeypatch.setattr(det, "raw_maps", lambda x: torch.rand(len(x), 2, *x.shape[-2:]))
    with caplog.at_level(logging.WARNING, logger="medad"):
        noise = det.diagnostics(normals.repeat(4, 1, 1, 1))
    assert abs(noise["fpi_auroc_intra"] - 0.5) < 0.05 and "consider refine: false" in caplog.text


def test_api_fit_with_an_unlabeled_pool() -> None:
    normals, _ = make_phantoms(12, 32, seed=0)
    pool, _ = make_phantoms(6, 32, seed=1, lesion=True)
    test, _ = make_phantoms(4, 32, seed=2, lesion=True)
    cfg = RunConfig.model_validate(
        {
            "data": {"image_size": 32},
            "encoder": {"width": 8},
            "detector": {"params": TINY},
            "train": {"epochs": 1, "batch_size": 8, "progress": False},
        }
    )
    model = AnomalyDetector(cfg, method="none", detector="ddad").fit(normals[:9], normals[9:], unlabeled=pool)
    assert list(model.detectors_) == ["ddad"] and bool(model.detectors_["ddad"].dual)
    scores = model.decision_function(test)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert model.anomaly_map(test).shape[-2:] == (32, 32)
    keys = {"ddad_fpi_auroc_intra", "ddad_fpi_auroc_inter", "ddad_fpi_auroc_refined"}
    assert set(model.diagnostics(normals[9:])) == keys
