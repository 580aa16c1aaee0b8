"""Checkpoints and models on disk: the tensor file and its JSON bound together, pickles refused,
a full disk reported in one line with the previous files intact, and broken model folders named."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch

from medad import AnomalyDetector
from medad.config import RunConfig, TrainConfig
from medad.atomic import WriteError, atomic_write_text
from medad.methods.base import PretrainMethod
from medad.model import MODEL_FORMAT
from medad.models.resnet import ResNetEncoder, load_encoder_weights
from medad.train import checkpoint
from medad.train.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from medad.train.loop import train_method

TINY = {"data": {"image_size": 16}, "encoder": {"width": 4}, "method": {"name": "none"},
        "detector": {"name": "mahalanobis", "also": []}, "train": {"epochs": 0, "progress": False}}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A fitted tiny model saved to a folder (tests copy it before editing)."""
    folder = tmp_path_factory.mktemp("model")
    AnomalyDetector(RunConfig.model_validate(TINY)).fit(torch.rand(12, 1, 16, 16)).save(folder)
    return folder


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("model.pt", "model.json"):
        (to / name).write_bytes((folder / name).read_bytes())
    return to


def _strip_hashes(path: Path) -> None:
    """Make ``path`` and its JSON look like an older medad's: no hash on either side."""
    state = torch.load(path, weights_only=True)
    state.pop(checkpoint.META_SHA256)
    torch.save(state, path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.pop(checkpoint.TENSORS_SHA256)
    path.with_suffix(".json").write_text(json.dumps(meta))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- the binding ---------------------------------------------------------------------------------
def test_an_edited_json_or_a_swapped_tensor_file_is_refused_naming_both_files(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(3.0)}, {"epoch": 1, "lr": 0.1})
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"w": torch.arange(4.0)}, {"epoch": 1, "lr": 0.1})

    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "lr": 0.2}))
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path)
    assert f"{path} and ck.json do not belong together: ck.json was edited after saving" in _one_line(info)

    save_checkpoint(path, {"w": torch.arange(3.0)}, {"epoch": 1, "lr": 0.1})
    path.write_bytes(other.read_bytes())  # the same metadata, another save's tensors
    with pytest.raises(CheckpointMismatchError, match="ck.pt was changed after saving"):
        load_checkpoint(path)


def test_a_model_json_with_an_edited_image_size_is_refused(saved_model, tmp_path):
    folder = _copy(saved_model, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["data"]["image_size"] = 32  # the same encoder shapes: it would load and score differently
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(CheckpointMismatchError) as info:
        AnomalyDetector.load(folder)
    assert "model.pt and model.json do not belong together: model.json was edited after saving" in _one_line(info)


def test_files_saved_before_the_hashes_load_with_a_warning(saved_model, tmp_path, caplog):
    folder = _copy(saved_model, tmp_path / "m")
    _strip_hashes(folder / "model.pt")
    with caplog.at_level(logging.WARNING, logger="medad"):
        model = AnomalyDetector.load(folder)
    assert model.threshold_ is not None
    assert "saved without the hashes that tie them together" in caplog.text


def test_an_older_model_whose_json_disagrees_with_its_tensors_is_one_line(saved_model, tmp_path):
    folder = _copy(saved_model, tmp_path / "m")
    _strip_hashes(folder / "model.pt")
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["encoder"]["width"] = 8
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        AnomalyDetector.load(folder)
    message = _one_line(info)
    assert message.startswith(f"{folder / 'model.pt'}: the saved encoder does not fit (")
    assert "conv1.weight is [4, 1, 3, 3] in the file but [8, 1, 3, 3] here" in message


def test_an_older_model_json_with_an_invalid_config_names_the_file(saved_model, tmp_path):
    folder = _copy(saved_model, tmp_path / "m")
    _strip_hashes(folder / "model.pt")
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["data"]["image_size"] = -3
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        AnomalyDetector.load(folder)
    assert _one_line(info) == (f"{folder / 'model.json'}: config: data.image_size: Input should be greater than or "
                               "equal to 8 (got -3)")


# -- what is not loaded --------------------------------------------------------------------------
def test_a_pickled_file_is_refused_in_one_line_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"encoder": torch.nn.Linear(2, 2)}, path)  # a whole module: pickled Python objects
    path.with_suffix(".json").write_text("{}")
    for load in (lambda: load_checkpoint(path), lambda: load_encoder_weights(ResNetEncoder(1, 4, "cifar"), path)):
        with pytest.raises(ValueError) as info:
            load()
        message = _one_line(info)
        assert message.startswith(f"{path} holds pickled Python objects (torch.nn.modules.linear.Linear)")
        assert "weights_only" not in message and "trust" not in message


def test_a_file_that_is_no_tensor_file_is_named(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = _one_line(info)
    assert message.startswith(f"{path} is not a PyTorch tensor file or is damaged (Unsupported operand")
    assert "weights_only" not in message


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "model.json").unlink(), "model.json not found: model.pt is not usable without it"),
    (lambda folder: (folder / "model.json").write_text("{config"), "model.json is not valid JSON (Expecting"),
    (lambda folder: (folder / "model.json").write_text("[1, 2]"), "is not medad metadata (a JSON object)"),
    (lambda folder: (folder / "model.json").write_text(json.dumps({"format": MODEL_FORMAT + 1,
                                                                   "medad_version": "9.0"})),
     "was written by a newer medad (9.0, model format 2; this is medad"),
    (lambda folder: (folder / "model.json").write_text("{}"), "is not a medad model's metadata (no config, scores)"),
])
def test_a_broken_model_folder_is_one_line_naming_the_file(saved_model, tmp_path, damage, message):
    folder = _copy(saved_model, tmp_path / "m")
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        AnomalyDetector.load(folder)
    assert message in _one_line(info)


def test_a_folder_without_a_model_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no saved model in {tmp_path}: expected model.pt and model.json"):
        AnomalyDetector.load(tmp_path)


def test_a_model_loads_from_its_run_folder_or_either_file(saved_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _copy(saved_model, run / "model")
    for where in (run, run / "model", run / "model" / "model.pt", run / "model" / "model.json"):
        assert AnomalyDetector.load(where).fitted_scores == ["mahalanobis"]


class Regression(PretrainMethod):
    name = "regression"

    def training_loss(self, images):
        return {"loss": (self.encoder(images.flatten(1)) - 1).pow(2).mean()}


# -- a full disk ---------------------------------------------------------------------------------
def _full_disk_after(monkeypatch, good_files: int) -> None:
    """The temporary files after the first ``good_files`` are opened on /dev/full: their writes
    fail with the kernel's ENOSPC, as on a full disk (no disk is filled)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real, opened = tempfile.mkstemp, []

    def mkstemp(dir, prefix, suffix):
        fd, name = real(dir=dir, prefix=prefix, suffix=suffix)
        opened.append(name)
        if len(opened) > good_files:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("good_files", [0, 1])  # the tensor file fails, or its JSON after it
def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch, good_files):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(1000)}, {"epoch": 1})
    _full_disk_after(monkeypatch, good_files)
    with pytest.raises(WriteError) as info:
        save_checkpoint(path, {"w": torch.ones(1000)}, {"epoch": 2})
    failed = "last.pt" if good_files == 0 else "last.json"
    assert _one_line(info) == (f"cannot write {tmp_path / failed}: the disk is full (no space left on the device); "
                               f"the previous {failed}, if any, is unchanged")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    state, meta = load_checkpoint(path)
    assert meta["epoch"] == 1 and state["w"].sum() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.pt"]


def test_a_disk_that_fills_during_training_stops_it_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    _full_disk_after(monkeypatch, 2)  # epoch 1's last.pt and last.json are written, epoch 2's are not
    method = Regression(torch.nn.Linear(4, 1))
    with pytest.raises(WriteError, match="last.pt: the disk is full"):
        train_method(method, torch.rand(8, 1, 2, 2), None, TrainConfig(epochs=3, batch_size=4, progress=False),
                     checkpoint_path=ckpt)
    monkeypatch.undo()
    assert load_checkpoint(ckpt)[1]["epoch"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.json", "last.pt"]


def test_torchs_failed_write_is_named_as_such(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(3)}, {"epoch": 1})

    def short_write(obj, fh):
        fh.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 457216 vs 457112")

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    with pytest.raises(WriteError) as info:
        save_checkpoint(path, {"w": torch.ones(3)}, {"epoch": 2})
    assert _one_line(info).startswith(f"cannot write {path}: the write failed part-way ([enforce fail")
    assert "is the disk full?" in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)[1]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.pt"]


def test_metrics_and_other_text_files_report_a_full_disk(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "metrics.json", "{}")
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(WriteError, match="metrics.json: the disk is full"):
        atomic_write_text(tmp_path / "metrics.json", '{"image_auroc": 0.9}')
    assert (tmp_path / "metrics.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
