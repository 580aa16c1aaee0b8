"""The foundation's acceptance check on real brain MRI (lgg_brain_mri_mini, 128 px RGB)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from medad.cli import app
from medad.evaluation.records import ResultSet

pytestmark = pytest.mark.integration


def test_train_then_predict_reproduces_evaluate(shared_data, tmp_path):
    data = shared_data / "lgg_brain_mri_mini"
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--method", "contrastive",
                                 "--detector", "mahalanobis", "--image-size", "64", "--channels", "3",
                                 "--epochs", "2", "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "manifest.csv", "metrics.json", "predictions.npz", "report.html",
                 "model/model.pt", "model/model.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test_normal"] == 8 and metrics["n_test_abnormal"] == 8
    assert metrics["n_train"] + metrics["n_val"] == 24

    result = runner.invoke(app, ["evaluate", "--model", str(run), "--data", str(data)])
    assert result.exit_code == 0, result.output
    evaluated = {r.id: r.score for r in ResultSet.load(run / "eval" / data.name / "predictions.npz")}
    result = runner.invoke(app, ["predict", "--model", str(run), str(data / "test" / "good"),
                                 str(data / "test" / "tumor"), "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "pred" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    for row in rows:
        assert float(row["score"]) == pytest.approx(evaluated[row["path"]], rel=1e-4, abs=1e-5)
