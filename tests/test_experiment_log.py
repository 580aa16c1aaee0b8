"""`medad train --log tensorboard` (issue 30 item 5): every epoch's values, the sensitivity score and
the final figures in TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from typer.testing import CliRunner

from medad import experiment_log
from medad.cli import app
from medad.config import RunConfig
from medad.data.synthetic import write_phantom_dataset
from medad.pipeline import fingerprint, train_run
from medad.train.core import run_epochs, shuffled_batches
from tolerance import tolerance

FLOAT32 = tolerance(torch.float32)  # TensorBoard keeps a scalar as a float32
TINY = {
    "data": {"image_size": 32, "channels": 1, "val_fraction": 0.25},
    "encoder": {"width": 8},
    "method": {"name": "contrastive"},  # logs a component beside its loss: positive_similarity
    "detector": {"name": "nnd", "also": [{"name": "dae", "params": {"epochs": 2, "widths": [4, 8], "batch_size": 8}}]},
    "train": {"epochs": 4, "checkpoint_every": 2, "batch_size": 8, "progress": False, "seed": 2,
              "log": ["tensorboard"]},
    "evaluation": {"top_k": 2},
}


def _config(data, **train) -> RunConfig:
    return RunConfig.model_validate({**TINY, "data": {**TINY["data"], "path": str(data)},
                                     "train": {**TINY["train"], **train}})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_train=24, n_test_normal=4, n_test_abnormal=4, size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def resumed_run(data, tmp_path_factory):
    """A run killed after logging epoch 3 (its last checkpoint: epoch 2), then resumed: epoch 3 is
    trained again and must not be logged twice."""
    run_dir = tmp_path_factory.mktemp("run")
    original = experiment_log.TensorBoardLog.epoch

    def killed_after_epoch_3(self, prefix, record):
        original(self, prefix, record)
        if prefix == "pretrain" and record["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment_log.TensorBoardLog, "epoch", killed_after_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            train_run(_config(data), run_dir)
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["epoch"] == 2
    metrics = train_run(_config(data), run_dir, resume=True)
    return run_dir, metrics


def _events(run_dir):
    return sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _scalars(run_dir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_every_epoch_value_is_logged_once_equal_to_the_history(resumed_run):
    run_dir, _ = resumed_run
    history = json.loads((run_dir / "model" / "model.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    logged = _scalars(run_dir)
    expected: dict[str, dict[int, float]] = {}
    for record in history:
        for key, value in record.items():
            if key not in ("epoch", "selected"):
                name = experiment_log.HISTORY_NAMES.get(key, key)
                expected.setdefault(f"pretrain/{name}", {})[record["epoch"]] = value
    assert {"pretrain/loss", "pretrain/val_loss", "pretrain/lr", "pretrain/positive_similarity",
            "pretrain/sensitivity_score", "pretrain/sensitivity_score_se"} <= set(expected)
    assert sorted(expected["pretrain/sensitivity_score"]) == [2, 4]  # computed at checkpoint epochs only
    assert {tag: values for tag, values in logged.items() if tag.startswith("pretrain/")}.keys() == expected.keys()
    for tag, values in expected.items():
        assert sorted(logged[tag]) == sorted(values), tag
        # epoch 3 was logged by the killed process and trained again after the resume: its values
        # are the same (a resume is exact), its timing is not
        steps = [s for s in sorted(values) if s != 3 or tag not in ("pretrain/seconds", "pretrain/images_per_second")]
        torch.testing.assert_close(torch.tensor([logged[tag][s] for s in steps], dtype=torch.float64),
                                   torch.tensor([values[s] for s in steps], dtype=torch.float64), **FLOAT32)


def test_a_resumed_run_continues_the_log_without_a_duplicated_step(resumed_run):
    run_dir, _ = resumed_run
    files = _events(run_dir)
    assert len(files) == 2  # the killed process's file and the resumed one's
    counts = Counter((value.tag, event.step) for path in files
                     for event in LegacyEventFileLoader(str(path)).Load() for value in event.summary.value)
    assert counts[("pretrain/loss", 3)] == 1 and max(counts.values()) == 1
    first = {(tag, step) for path in files[:1] for event in LegacyEventFileLoader(str(path)).Load()
             for tag, step in [(value.tag, event.step) for value in event.summary.value]}
    assert {step for tag, step in first if tag == "pretrain/loss"} == {1, 2, 3}


def test_the_detectors_network_logs_under_its_own_name(resumed_run):
    run_dir, _ = resumed_run
    saved = json.loads(next((run_dir / "checkpoints" / "networks").glob("*dae.json")).read_text())["losses"]
    logged = _scalars(run_dir)["dae/loss"]
    assert sorted(logged) == [1, 2]
    torch.testing.assert_close(torch.tensor([logged[1], logged[2]], dtype=torch.float64),
                               torch.tensor(saved, dtype=torch.float64), **FLOAT32)


def test_final_figures_config_and_hyper_parameters_are_logged(resumed_run):
    run_dir, metrics = resumed_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    logged = _scalars(run_dir)
    figures = {"image_auroc": saved["image_auroc"], "image_ap": saved["image_ap"],
               "sensitivity": saved["sensitivity"], "sensitivity_score": saved["sensitivity_score"],
               "scores/dae/image_auroc": saved["scores"]["dae"]["image_auroc"], "n_train": saved["n_train"]}
    for key, value in figures.items():
        assert logged[f"final/{key}"].keys() == {4}, key  # at the run's last epoch
        torch.testing.assert_close(logged[f"final/{key}"][4], float(value), **FLOAT32)
    numbers = experiment_log.tags(saved, "final")
    assert {tag for tag in logged if tag.startswith("final/")} == set(numbers)
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    method:\n      name: contrastive" in config and "      log:\n      - tensorboard" in config
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_a_run_that_starts_over_deletes_the_old_log_and_without_log_writes_none(resumed_run, data, tmp_path):
    shutil.copytree(resumed_run[0] / "tensorboard", tmp_path / "tensorboard")
    (tmp_path / "tensorboard" / "notes.txt").write_text("mine")
    train_run(_config(data, epochs=1, log=[]).model_copy(
        update={"detector": RunConfig.model_validate({"detector": {"name": "nnd", "also": []}}).detector}), tmp_path)
    assert not _events(tmp_path)  # the old run's events are gone, no new file was written
    assert (tmp_path / "tensorboard" / "notes.txt").read_text() == "mine"  # and nothing else was touched


def test_logging_is_not_part_of_what_a_checkpoint_is_resumed_under(data):
    assert fingerprint(_config(data), "m") == fingerprint(_config(data, log=[]), "m")
    assert fingerprint(_config(data), "m") != fingerprint(_config(data, epochs=5), "m")


@pytest.mark.parametrize(("args", "message"), [
    (["--log", "tb"], "--log (train.log.0): Input should be 'tensorboard' (got 'tb')"),
    (["--set", "train.log=tb"], "--set train.log (train.log.0): Input should be 'tensorboard' (got 'tb')"),
])
def test_an_unknown_log_is_one_line_naming_the_flag(tmp_path, args, message):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "r").exists()


def test_a_missing_tensorboard_is_one_line_saying_how_to_install_it(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--log", "tensorboard",
                                      "--epochs", "1", "--image-size", "32"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "--log tensorboard" in line and "pip install tensorboard" in line
    assert not out.exists()  # refused before the run folder was made


def test_the_loop_core_logs_each_epoch_after_its_hooks_and_before_its_checkpoint():
    """An epoch saved in a checkpoint is in the log: a resumed run, which starts after it, leaves no gap."""
    events = []

    class Recording(experiment_log.ExperimentLog):
        def epoch(self, prefix, record):
            events.append(("log", prefix, record["epoch"], record.get("val_loss")))

    def step(idx, epoch, done):
        return {"loss": 0.5}

    g = torch.Generator().manual_seed(0)
    with experiment_log.logging_to(Recording()):
        run_epochs(step, lambda epoch: shuffled_batches(8, 4, g), epochs=2, name="toy net",
                   after_epoch=lambda record: record.update(val_loss=0.25),
                   checkpoint=lambda record: events.append(("checkpoint", record["epoch"])))
    assert events == [("log", "toy net", 1, 0.25), ("checkpoint", 1), ("log", "toy net", 2, 0.25), ("checkpoint", 2)]
    run_epochs(step, lambda epoch: shuffled_batches(8, 4, g), epochs=1, name="toy net")
    assert len(events) == 4  # outside logging_to nothing is logged
