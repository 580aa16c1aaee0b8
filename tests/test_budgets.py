"""--budget paper: every published value is a valid setting, the run's own values win over it, and
the docs list each value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medad import AnomalyDetector
from medad.budgets import DETECTOR_BUDGETS, METHOD_BUDGETS, budget_overrides
from medad.config import RunConfig, apply_budget, resolve_config
from medad.detectors.registry import detector_class
from medad.methods.registry import METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("method", sorted(METHOD_BUDGETS))
def test_every_method_budget_is_a_valid_config_for_each_of_its_detectors(method):
    for detector in METHOD_BUDGETS[method].detectors or ("mahalanobis",):
        cfg = apply_budget(RunConfig.model_validate({"method": {"name": method}, "detector": {"name": detector}}),
                           "paper")
        METHODS[method].Params.model_validate(cfg.method.params)
        detector_class(detector).Params.model_validate(cfg.detector.params)
        for knob in METHOD_BUDGETS[method].knobs:
            node = cfg.model_dump(mode="json")
            for part in knob.key.split("."):
                node = node[part]
            assert node == knob.value, knob.key


@pytest.mark.parametrize("detector", sorted(DETECTOR_BUDGETS))
def test_every_detector_budget_is_a_valid_config(detector):
    cfg = apply_budget(RunConfig.model_validate({"method": {"name": "none"}, "detector": {"name": detector}}),
                       "paper")
    detector_class(detector).Params.model_validate(cfg.detector.params)
    assert cfg.data.image_size == dict((k.key, k.value) for k in DETECTOR_BUDGETS[detector].knobs)["data.image_size"]


def test_the_method_budget_wins_over_the_detector_s_and_its_score_knobs_stay_with_its_scores():
    assert budget_overrides("pmsacl", "igd")["data.image_size"] == 256
    assert budget_overrides("con2", "ddad")["data.image_size"] == 224  # pre-trained at 224, scored there
    assert budget_overrides("none", "ddad")["data.image_size"] == 64
    assert "detector.params.normalize" in budget_overrides("dino_neg", "mahalanobis")
    assert "detector.params.normalize" not in budget_overrides("dino_neg", "nnd")  # nnd has no such knob
    assert budget_overrides("none", "nnd") == {}


def test_precedence_preset_then_budget_then_file_then_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": {"name": "con2", "params": {"temperature": 0.5}},
                                      "train": {"epochs": 7}}))
    cfg = resolve_config(config, preset="chest-xray", budget="paper", overrides={"train.batch_size": 16})
    assert cfg.budget == "paper" and cfg.preset == "chest-xray"
    assert cfg.train.epochs == 7 and cfg.method.params["temperature"] == 0.5  # the file's values
    assert cfg.train.batch_size == 16  # the flag's
    assert (cfg.train.optimizer, cfg.train.weight_decay, cfg.data.image_size) == ("adamw", 1e-3, 224)  # the budget's
    assert cfg.detector.name == "mahalanobis" and cfg.detector.params["tta"] == 19  # over the preset
    assert resolve_config(config, preset="chest-xray").train.optimizer == "adam"  # no budget: as before


def test_a_saved_paper_config_repeats_exactly(tmp_path):
    cfg = resolve_config(budget="paper", overrides={"method.name": "ccd", "train.epochs": 3})
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    again = resolve_config(saved)
    assert again == cfg and again.train.epochs == 3  # every value is explicit in a saved config


def test_api_budget_under_the_shortcuts():
    model = AnomalyDetector(budget="paper", method="dino_neg", epochs=2, image_size=32)
    cfg = model.config
    assert (cfg.train.epochs, cfg.data.image_size, cfg.train.batch_size, cfg.train.optimizer) == (2, 32, 256, "adamw")
    assert cfg.method.params["n_local"] == 8 and cfg.detector.params["normalize"] is True
    with pytest.raises(ValueError, match="budget"):
        AnomalyDetector(budget="papers")


@pytest.mark.parametrize("name", sorted(METHOD_BUDGETS) + sorted(DETECTOR_BUDGETS))
def test_the_docs_give_every_published_value(name):
    folder = "methods" if name in METHOD_BUDGETS else "detectors"
    page = DOCS / folder / f"{'autoencoders' if name in ('ae', 'ae_u', 'memae', 'msssim_ae') else name}.md"
    text = page.read_text()
    budget = (METHOD_BUDGETS | DETECTOR_BUDGETS)[name]
    assert "--budget paper" in text, page
    for knob in budget.knobs:
        assert f"`{knob.key}`" in text, f"{page} lacks the row of {knob.key}"
