"""The command line: help with examples everywhere, a full run, clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medad import __version__
from medad.cli import app
from medad.evaluation.records import ImageResult, ResultSet

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
    assert result.exit_code == 2 and "--select-by" in result.output and "best-guess" in result.output


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


def test_version_prints_and_exits_zero():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"medad {__version__}\n"


@pytest.mark.parametrize("args, flag", [
    (["synth", "--out", "x", "--n-train", "-3"], "--n-train"),
    (["synth", "--out", "x", "--size", "3"], "--size"),
    (["predict", "x.png", "--model", "m", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["compare", "a", "b", "--margin", "-1"], "--margin"),
])
def test_bad_numbers_name_their_option(args, flag):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and f"'{flag}'" in result.output


def test_config_errors_name_the_flag_that_set_the_value_one_line_each(tmp_path):
    result = runner.invoke(app, ["train", "--data", "x", "--out", str(tmp_path / "r"), "--image-size", "-3",
                                 "--batch-size", "1", "--method", "contrastiv", "--set", "train.lr=fast",
                                 "--set", "data.chanels=3"])
    assert result.exit_code == 2
    assert sorted(result.output.splitlines()) == sorted([
        "error: --image-size: Input should be greater than or equal to 8 (got -3)",
        "error: --method: unknown method 'contrastiv' (did you mean 'contrastive'?); known methods: ccd, con2, "
        "contrastive, dino_neg, none, pmsacl (`medad list`)",
        "error: --batch-size: Input should be greater than or equal to 2 (got 1)",
        "error: --set train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')",
        "error: --set data.chanels: unknown key (did you mean 'channels'?)",
    ])
    assert not (tmp_path / "r").exists()


def test_method_and_detector_params_are_checked_before_any_image_is_read(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
                                 "--detector", "nnd", "--set", "method.params.temperature=-1",
                                 "--set", "detector.params.k=0"])
    assert result.exit_code == 2 and result.output.splitlines() == [
        "error: --set method.params.temperature: Input should be greater than 0 (got -1)",
        "error: --set detector.params.k: Input should be greater than or equal to 1 (got 0)",
    ]


@pytest.mark.parametrize("text, message", [
    ("data: [", "is not valid YAML: expected the node content, but found '<stream end>' (line 1, column 8)"),
    ("- data\n- train\n", "must be a mapping of sections (data:, train:, ...) at the top level, not a list"),
    ("train:\n  epoch: 3\n", ": train.epoch: unknown key (did you mean 'epochs'?)"),
    ("train:\n  epochs: -1\n  batch_size: many\n", ": train.batch_size: Input should be a valid integer"),
    ("", "no data: pass --data PATH or set data.path in the config"),  # empty: the defaults, which have no data
])
def test_a_broken_config_file_is_named_in_one_line_per_problem(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output and "errors.pydantic.dev" not in result.output
    assert all(line.startswith("error: ") for line in result.output.splitlines())


@pytest.mark.parametrize("assignment, message", [
    ("train.epochs=[", "--set train.epochs=[: the value is not valid YAML: expected the node content, but found "
                       "'<stream end>' (line 1, column 2)"),
    ("train.epochs.max=3", "unknown config key 'train.epochs.max': 'epochs' is a value, not a section"),
    ("trian.epochs=3", "unknown config key 'trian.epochs': no section 'trian' there (did you mean 'train'?)"),
    ("train=5", "--set train: Input should be a valid dictionary or instance of TrainConfig (got 5)"),
    ("epochs", "--set expects KEY=VALUE, got 'epochs'"),
])
def test_a_malformed_set_is_one_line(tmp_path, assignment, message):
    result = runner.invoke(app, ["train", "--data", "x", "--out", str(tmp_path / "r"), "--set", assignment])
    assert result.exit_code == 2 and result.output == f"error: {message}\n"


def test_a_diverging_training_is_one_line_that_suggests_a_lower_learning_rate(tmp_path):
    data, tiny = _tiny_dataset(tmp_path, 12)
    result = runner.invoke(app, ["-q", "train", *tiny, "--out", str(tmp_path / "r"), "--epochs", "2", "--lr", "1e30"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1
    assert result.output.endswith("; lower the learning rate (train.lr / --lr, now 1e+30) or check the input images\n")


def test_a_model_with_an_edited_model_json_is_refused_in_one_line(tmp_path):
    data, tiny = _tiny_dataset(tmp_path, 12)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *tiny, "--out", str(run), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "model" / "model.json").read_text())
    meta["threshold"] = 0.0
    (run / "model" / "model.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["predict", "--model", str(run), str(data / "test"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"error: {run / 'model' / 'model.pt'} and model.json do not belong together: model.json was edited after "
        "saving, or the two come from different saves; use both files of one save"]


def test_the_command_line_checks_options_and_config_without_importing_torch(tmp_path):
    """`medad --help`, `--version`, `list` and option and config errors answer before torch (seconds
    to import) is loaded: checked in a fresh interpreter, whose modules are its own."""
    script = f"""
import sys
from typer.testing import CliRunner
from medad.cli import app
runner = CliRunner()
for args in (["--help"], ["--version"], ["list"], ["train", "--help"],
             ["train", "--image-size", "-3", "--data", "x", "--out", {str(tmp_path / "r")!r}],
             ["train", "--config", {str(tmp_path / "missing.yaml")!r}, "--out", "y"],
             ["train", "--set", "method.name=simclr", "--out", "y"]):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), (args, result.output)
print(sorted(m for m in ("torch", "scipy", "sklearn", "medad.model", "medad.pipeline") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hostile_paths_and_values_are_one_line_each(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    for args, message in [
        (["train", "--data", "x", "--out", str(a_file)], f"{a_file} is a file: the run folder to write (--out)"),
        (["train", "--data", "x", "--out", "y", "--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        (["train", "--data", "x", "--out", "y", "--channels", "2"], "--channels: Input should be 1 or 3 (got 2)"),
        (["train", "--config", str(tmp_path), "--out", "y"], f"cannot read config {tmp_path}: [Errno 21]"),
        (["evaluate", "--model", str(tmp_path), "--data", "x"], f"no saved model in {tmp_path}: expected model.pt"),
        (["predict", "--model", str(tmp_path / "broken.onnx"), str(a_file), "--out", str(tmp_path / "p")],
         f"{tmp_path / 'broken.onnx'} is not a readable ONNX file (Error parsing message"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and result.output.startswith(f"error: {message}"), (args, result.output)
        assert len(result.output.splitlines()) == 1, result.output


def test_report_on_damaged_files_names_them_without_numpys_unsafe_advice(tmp_path):
    (tmp_path / "predictions.npz").write_text("garbage")
    (tmp_path / "metrics.json").write_text("{")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'predictions.npz'} is not a predictions file medad can read (damaged, or holding "
        "pickled Python objects, which medad does not load)\n")
    ResultSet([ImageResult(id="a.png", score=0.1, label=0)]).save(tmp_path / "predictions.npz")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'metrics.json'} is not valid JSON (Expecting property name enclosed in double quotes "
        "at line 1, column 2)\n")
