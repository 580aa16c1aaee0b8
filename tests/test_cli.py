"""The command line: help with examples everywhere, a full run, clear errors without tracebacks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medad.cli import app

runner = CliRunner()
COMMANDS = ["train", "evaluate", "predict", "report", "compare", "synth", "list"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_list_shows_registered_components():
    result = runner.invoke(app, ["list"])
    assert "contrastive" in result.output and "mahalanobis" in result.output


def test_synth_train_predict_report(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    result = runner.invoke(app, ["synth", "--out", str(data), "--size", "32", "--n-train", "20",
                                 "--n-test-normal", "4", "--n-test-abnormal", "4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--image-size", "32",
                                 "--epochs", "1", "--batch-size", "8", "--detector", "lh", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["detector"] == "lh" and metrics["image_size"] == 32
    result = runner.invoke(app, ["predict", "--model", str(run), str(data / "test" / "lesion"),
                                 "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 5
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and "report.html" in result.output


def test_errors_are_one_line_messages(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "error" in result.output and "missing" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "medad train" in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                 "--detector", "nonsense"])
    assert result.exit_code == 2


def _tiny_dataset(tmp_path, n_train: int):
    """A 32-px phantom folder with ``n_train`` training images and the train flags of a tiny run on it."""
    data = tmp_path / "data"
    runner.invoke(app, ["synth", "--out", str(data), "--size", "32", "--n-train", str(n_train),
                        "--n-test-normal", "2", "--n-test-abnormal", "2"])
    return data, ["--data", str(data), "--image-size", "32", "--batch-size", "4", "--no-progress",
                  "--set", "encoder.width=4"]


def test_set_overrides_any_config_value(tmp_path):
    data, tiny = _tiny_dataset(tmp_path, 12)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *tiny, "--out", str(run), "--epochs", "1",
                                 "--set", "method.params.temperature=0.5"])
    assert result.exit_code == 0, result.output
    saved = (run / "config.yaml").read_text()
    assert "width: 4" in saved and "temperature: 0.5" in saved
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r2"),
                                 "--set", "encoder.nonsense=1"])
    assert result.exit_code == 2 and "nonsense" in result.output


def test_select_by_and_unlabeled_flags(tmp_path):
    """--select-by and --unlabeled set train.select_by and data.unlabeled (the issue's named flags)."""
    data, tiny = _tiny_dataset(tmp_path, 16)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *tiny, "--out", str(run), "--epochs", "2", "--detector", "nnd",
                                 "--set", "train.sensitivity_holdout=4",
                                 "--select-by", "sensitivity", "--unlabeled", str(data / "test" / "lesion")])
    assert result.exit_code == 0, result.output
    saved = (run / "config.yaml").read_text()
    assert "select_by: sensitivity" in saved and f"unlabeled: {data / 'test' / 'lesion'}" in saved
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["select_by"] == "sensitivity" and metrics["selected_epoch"] in (1, 2)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r2"),
                                 "--select-by", "best-guess"])
    assert result.exit_code == 2 and "select_by" in result.output


def test_ddad_run_reports_its_diagnostics_and_resumes_from_its_saved_networks(tmp_path):
    data, tiny = _tiny_dataset(tmp_path, 24)  # 2 validation normals: the least the diagnostics need
    run = tmp_path / "run"
    ddad = ["train", *tiny, "--out", str(run), "--method", "none", "--detector", "ddad",
            "--unlabeled", str(data / "test" / "lesion"),
            "--set", 'detector.params={"ensemble": 2, "epochs": 1, "asr_epochs": 1, "batch_size": 4, "latent": 4, '
                     '"hidden": 8, "asr_width": 4, "refine": true}']
    result = runner.invoke(app, ddad)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"ddad_fpi_auroc_intra", "ddad_fpi_auroc_inter", "ddad_fpi_auroc_refined"} <= set(metrics)
    assert metrics["epochs"] == 0  # method none: nothing was pre-trained, whatever train.epochs says
    saved = sorted(p.name for p in (run / "checkpoints" / "networks").glob("*.pt"))
    assert saved == ["01-ddad_NDM_0.pt", "02-ddad_NDM_1.pt", "03-ddad_UDM_0.pt", "04-ddad_UDM_1.pt",
                     "05-ddad_ASR_Net.pt"]
    result = runner.invoke(app, [*ddad, "--resume"])
    assert result.exit_code == 0, result.output
    assert result.output.count("(resumed)") == 5  # every network loaded, none trained again
    again = json.loads((run / "metrics.json").read_text())
    assert again["image_auroc"] == metrics["image_auroc"] and again["threshold"] == metrics["threshold"]


def test_compare_ranks_runs_by_sensitivity_score_and_refuses_other_splits(tmp_path):
    _, tiny = _tiny_dataset(tmp_path, 16)
    common = [*tiny, "--epochs", "2", "--set", "train.sensitivity_holdout=4"]
    for name, extra in [("t05", ["--set", "method.params.temperature=0.5"]),
                        ("t02", ["--set", "method.params.temperature=0.2"]),
                        ("seed1", ["--seed", "1"])]:
        result = runner.invoke(app, ["train", *common, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "t05"), str(tmp_path / "t02")])
    assert result.exit_code == 0, result.output
    scores = {name: json.loads((tmp_path / name / "model" / "model.json").read_text())["history"][-1]["sensitivity"]
              for name in ("t05", "t02")}
    best, worst = max(scores, key=scores.get), min(scores, key=scores.get)
    assert "standard errors" in result.output
    high, low = f"{scores[best]:.4f}", f"{scores[worst]:.4f}"
    if high != low:
        assert result.output.index(high) < result.output.index(low)
    else:  # an AUROC over a few held-out images takes few values (here multiples of 1/8): a tie has no order
        assert result.output.count(high) >= 2
    result = runner.invoke(app, ["compare", str(tmp_path / "t05"), str(tmp_path / "seed1")])
    assert result.exit_code == 2 and "train.seed" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "t05")])
    assert result.exit_code == 2 and "at least two" in result.output
