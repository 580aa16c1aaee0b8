"""Presets: every preset is a valid config, explicit values override it (YAML, --set, flags), the
resolved config records it and repeats the run, and `medad list` shows them."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medad import AnomalyDetector
from medad.cli import app
from medad.config import RunConfig, apply_overrides, from_preset, load_config, resolve_config
from medad.data.synthetic import make_phantoms
from medad.detectors.fusion import fuse_scores
from medad.detectors.registry import build_detector
from medad.methods.registry import build_method
from medad.models.resnet import build_encoder
from medad.presets import PRESETS, Preset, merge_preset

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_method_and_detector(name: str) -> None:
    cfg = from_preset(name)
    assert cfg.preset == name
    encoder = build_encoder(cfg.encoder, in_channels=cfg.data.channels, image_size=cfg.data.image_size)
    build_method(cfg.method, encoder)
    build_detector(cfg.detector.name, cfg.detector.params)


def test_chest_xray_fuses_s_lh_on_the_first_stage_with_the_dae() -> None:
    """Each ``also`` entry keeps its own params: the fused S_LH reads layer1, Mahalanobis the embedding."""
    values = PRESETS["chest-xray"].values
    small_dae = {**values["detector"]["also"][-1], "params": {**values["detector"]["also"][-1]["params"], "epochs": 1}}
    cfg = from_preset("chest-xray", {"data": {"image_size": 32, "val_fraction": 0.25}, "encoder": {"width": 8},
                                     "train": {"epochs": 0, "progress": False},
                                     "detector": {"also": [*values["detector"]["also"][:-1], small_dae]}})
    model = AnomalyDetector(cfg).fit(make_phantoms(24, 32, seed=0)[0])
    assert model.detectors_["lh"].params.layer == "layer1" and model.detectors_["nnd"].params.layer == "layer1"
    assert model.detectors_["mahalanobis"].params.layer is None and set(model.fusion_) == {"lh", "dae"}
    out = model.score_all(make_phantoms(4, 32, seed=1, lesion=True)[0])
    members = {name: out[name].scores for name in ("lh", "dae")}
    torch.testing.assert_close(out["fusion"].scores, fuse_scores(members, model.fusion_))


def test_explicit_values_override_the_preset_and_the_rest_is_kept() -> None:
    cfg = from_preset("brain-mri", {"data": {"image_size": 128}, "detector": {"params": {"epochs": 3}}})
    assert cfg.data.image_size == 128 and cfg.detector.params["epochs"] == 3
    assert cfg.detector.params["polarity"] == "bright" and cfg.maps.foreground is not None


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="brain-mri"):
        merge_preset({"preset": "lungs"})


def test_another_detector_drops_the_preset_detector_params() -> None:
    cfg = apply_overrides(from_preset("brain-mri"), {"detector.name": "padim", "detector.params.d": 20})
    assert cfg.detector.params == {"d": 20}
    build_detector(cfg.detector.name, cfg.detector.params)


def test_another_detector_drops_the_preset_also_and_fuse_unless_given(monkeypatch) -> None:
    fused = {"detector": {"name": "mahalanobis", "also": ["nnd", {"name": "dae", "params": {"epochs": 2}}],
                          "fuse": ["mahalanobis", "dae"]}}
    monkeypatch.setitem(PRESETS, "fused", Preset("test preset with fusion", fused))
    assert from_preset("fused").detector.fuse == ["mahalanobis", "dae"]
    cfg = apply_overrides(from_preset("fused"), {"detector.name": "nnd"})
    assert cfg.detector.also == "auto" and cfg.detector.fuse == []
    kept = apply_overrides(from_preset("fused"), {"detector.name": "padim", "detector.also": ["nnd"]})
    assert kept.detector.also_names() == ["nnd"] and kept.detector.fuse == []


def test_yaml_preset_and_the_flag_that_replaces_it(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "brain-mri", "train": {"seed": 5}}))
    cfg = load_config(path)
    assert cfg.detector.name == "dae" and cfg.train.seed == 5
    assert load_config(path, preset="generic").preset == "generic"


def test_set_preset_applies_the_preset_as_the_flag_does() -> None:
    by_set = resolve_config(overrides={"preset": "brain-mri", "train.seed": 4})
    assert by_set == resolve_config(preset="brain-mri", overrides={"train.seed": 4})
    assert by_set.detector.name == "dae" and by_set.train.seed == 4  # the preset's values, not just its name
    with pytest.raises(ValueError, match="two presets given"):
        resolve_config(preset="generic", overrides={"preset": "brain-mri"})


def test_a_resolved_config_repeats_without_the_preset_changing_it(tmp_path) -> None:
    cfg = apply_overrides(from_preset("brain-mri"), {"detector.params.epochs": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(path) == cfg


def test_python_api_takes_a_preset() -> None:
    det = AnomalyDetector(preset="brain-mri", epochs=2)
    assert det.config.detector.name == "dae" and det.config.train.epochs == 2
    with pytest.raises(ValueError, match="not both"):
        AnomalyDetector(RunConfig(), preset="generic")


def test_cli_list_shows_presets_and_train_uses_one(tmp_path) -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and all(name in result.output for name in PRESETS)
    data = tmp_path / "data"
    runner.invoke(app, ["synth", "--out", str(data), "--size", "32", "--n-train", "16",
                        "--n-test-normal", "2", "--n-test-abnormal", "2"])
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "brain-mri", "--data", str(data), "--out", str(run),
                                 "--image-size", "32", "--channels", "1", "--no-progress",
                                 "--set", "detector.params.epochs=1", "--set", "detector.params.widths=[4,8]",
                                 "--set", "detector.params.map_channels=null",
                                 "--set", "maps.foreground_channels=null"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] == "brain-mri" and saved["data"]["image_size"] == 32
    assert saved["detector"]["name"] == "dae" and saved["detector"]["params"]["epochs"] == 1
    assert saved["maps"]["foreground"] == PRESETS["brain-mri"].values["maps"]["foreground"]


def test_a_config_written_with_the_unused_evaluation_batch_size_still_loads(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"evaluation": {"batch_size": 128, "top_k": 4}}))
    cfg = load_config(path)
    assert cfg.evaluation.top_k == 4 and "batch_size" not in cfg.evaluation.model_dump()


def test_foreground_channels_beyond_the_image_channels_fail_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"foreground_channels \[1\] do not exist in data.channels=1"):
        RunConfig.model_validate({"maps": {"foreground": 0.1, "foreground_channels": [1]}})
    assert RunConfig.model_validate({"data": {"channels": 3}, "maps": {"foreground_channels": [1]}})
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "brain-mri", "--data", str(tmp_path), "--out", str(run),
                                 "--channels", "1", "--no-progress"])
    assert result.exit_code != 0 and "data.channels=1" in result.output and not run.exists()
