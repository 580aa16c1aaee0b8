"""``medad predict`` as a hostile user runs it (issue 27): folders that link to themselves, an
output folder holding an earlier prediction, a full disk, SIGTERM, files that vanish or do not
decode. scores.csv exists only complete; two runs never mix; every skip is named."""

from __future__ import annotations

import csv
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import medad
from medad import AnomalyDetector
from medad.atomic import leftovers
from medad.cli import app
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.prediction import predict_run
from medad.report.figures import HeatmapWriter


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model that learns nothing (the intensity baseline, spatial: it writes heatmaps) and skips
    unreadable files, saved: fitted in a second."""
    cfg = RunConfig.model_validate({
        "data": {"image_size": 32, "val_fraction": 0.25, "on_error": "skip"}, "encoder": {"width": 4},
        "method": {"name": "none"}, "detector": {"name": "intensity", "also": []},
        "train": {"epochs": 0, "progress": False},
    })
    folder = tmp_path_factory.mktemp("model")
    AnomalyDetector(cfg).fit(make_phantoms(16, 32, seed=0)[0]).save(folder)
    return folder


def images(folder: Path, n: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(np.full((32, 32), 8 * i % 256, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def rows(scores_csv: Path) -> list[dict]:
    with open(scores_csv) as fh:
        return list(csv.DictReader(fh))


def test_a_file_is_scored_once_however_often_it_is_found(model, tmp_path, caplog):
    """Issue 27: a folder holding a link to itself scored the same files ~40 times."""
    data = images(tmp_path / "data", 3)
    (data / "again").symlink_to(data)
    (data / "alias.png").symlink_to(data / "000.png")
    with caplog.at_level(logging.WARNING):
        found = rows(predict_run(model, [data, data / "001.png", data], tmp_path / "pred", progress=False))
    assert sorted(r["path"] for r in found) == [str(data / f"00{i}.png") for i in range(3)]
    assert "again: it is the folder" in caplog.text
    assert "skipping 6 files found before" in caplog.text and f"{data / 'alias.png'} (= {data / '000.png'})" \
        in caplog.text
    assert len(list((tmp_path / "pred" / "heatmaps").rglob("*.png"))) == 3


def test_an_output_folder_holding_files_needs_overwrite_and_then_holds_one_run(model, tmp_path):
    """Issue 27: a second predict into the same --out replaced scores.csv and mixed the heatmaps."""
    out = tmp_path / "pred"
    predict_run(model, [images(tmp_path / "first", 4)], out, progress=False, save_maps=True)
    (out / "notes.txt").write_text("mine")
    before = (out / "scores.csv").read_bytes()
    with pytest.raises(FileExistsError, match="pred is not empty .*--overwrite"):
        predict_run(model, [images(tmp_path / "second", 2)], out, progress=False)
    assert (out / "scores.csv").read_bytes() == before
    result = CliRunner().invoke(app, ["predict", "--model", str(model), str(tmp_path / "second"), "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output and "Traceback" not in result.output
    predict_run(model, [tmp_path / "second"], out, progress=False, overwrite=True)
    assert [Path(r["path"]).parent.name for r in rows(out / "scores.csv")] == ["second"] * 2
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [".medad-predict", "heatmaps/second/000.png", "heatmaps/second/001.png", "notes.txt",
                       "scores.csv"]


def test_a_full_disk_gives_one_line_naming_the_folder_and_no_scores_csv(model, tmp_path, monkeypatch):
    data = images(tmp_path / "data", 6)
    calls = []

    def full(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, *args)

    save = HeatmapWriter.save
    monkeypatch.setattr(HeatmapWriter, "save", full)
    result = CliRunner().invoke(app, ["predict", "--model", str(model), str(data), "--out", str(tmp_path / "p"),
                                      "--batch-size", "2", "--no-progress"])
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write the predictions to {tmp_path / 'p'}: No space left on device" in line
    assert not (tmp_path / "p" / "scores.csv").exists() and not leftovers(tmp_path / "p" / "scores.csv")
    monkeypatch.setattr(HeatmapWriter, "save", save)

    def fsync(fd):  # the disk fills while scores.csv itself is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="cannot write .*p2/scores.csv: the disk is full"):
        predict_run(model, [data], tmp_path / "p2", progress=False)
    assert not (tmp_path / "p2" / "scores.csv").exists() and not leftovers(tmp_path / "p2" / "scores.csv")


def test_an_interrupted_prediction_leaves_no_scores_csv_and_overwrite_clears_it(model, tmp_path, monkeypatch):
    data = images(tmp_path / "data", 6)
    calls = []

    def interrupt(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save(self, *args)

    save = HeatmapWriter.save
    monkeypatch.setattr(HeatmapWriter, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        predict_run(model, [data], tmp_path / "p", batch_size=2, progress=False)
    assert not (tmp_path / "p" / "scores.csv").exists() and not leftovers(tmp_path / "p" / "scores.csv")
    assert len(list((tmp_path / "p" / "heatmaps").rglob("*.png"))) == 2
    monkeypatch.setattr(HeatmapWriter, "save", save)
    predict_run(model, [images(tmp_path / "other", 1)], tmp_path / "p", progress=False, overwrite=True)
    assert [p.name for p in (tmp_path / "p" / "heatmaps").rglob("*.png")] == ["000.png"]


def test_sigterm_stops_predict_like_ctrl_c_and_leaves_no_complete_looking_output(model, tmp_path):
    """Issue 27: SIGTERM left a well-formed scores.csv with 8 of 400 rows. A real process, slowed
    down (every heatmap takes 50 ms more), is terminated once it has written a few heatmaps."""
    data = images(tmp_path / "data", 200)
    out = tmp_path / "pred"
    slow = ("import sys, time\n"
            "from medad.report.figures import HeatmapWriter\n"
            "save = HeatmapWriter.save\n"
            "HeatmapWriter.save = lambda self, *a: (time.sleep(0.05), save(self, *a))[1]\n"
            "from medad.cli import app\n"
            "app(prog_name='medad')\n")
    source = str(Path(medad.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    process = subprocess.Popen([sys.executable, "-c", slow, "predict", "--model", str(model), str(data),
                                "--out", str(out), "--batch-size", "4", "--no-progress"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("heatmaps/data/*.png"))) < 8 and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "predict ended before it could be terminated"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, output
    assert "interrupted (SIGTERM)" in output and "holds no scores.csv" in " ".join(output.split())
    assert "Traceback" not in output
    assert not (out / "scores.csv").exists() and not leftovers(out / "scores.csv")
    assert 8 <= len(list(out.glob("heatmaps/data/*.png"))) < 200


def test_interruptions_exit_130_on_ctrl_c_and_143_on_sigterm_and_the_handler_is_put_back(tmp_path, monkeypatch):
    from medad import pipeline
    from medad.cli import Terminated

    before = signal.getsignal(signal.SIGTERM)
    for raised, code, name in ((KeyboardInterrupt, 130, "Ctrl-C"), (Terminated, 143, "SIGTERM")):
        def stop(*args, **kwargs):
            raise raised
        monkeypatch.setattr(pipeline, "evaluate_run", stop)
        result = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path), "--data", str(tmp_path)])
        assert result.exit_code == code and f"interrupted ({name}): no metrics.json" in result.output
    assert signal.getsignal(signal.SIGTERM) is before


def test_files_that_vanish_or_do_not_decode_are_named_and_none_readable_is_an_error(model, tmp_path, caplog,
                                                                                     monkeypatch):
    from medad import prediction

    data = images(tmp_path / "data", 3)
    listed = prediction.output_names

    def list_then_vanish(inputs):
        found = listed(inputs)
        (data / "001.png").unlink()  # between listing and reading
        return found

    monkeypatch.setattr(prediction, "output_names", list_then_vanish)
    with caplog.at_level(logging.WARNING):
        found = rows(predict_run(model, [data], tmp_path / "p", progress=False))
    assert [Path(r["path"]).name for r in found] == ["000.png", "002.png"]
    assert "001.png: file not found" in caplog.text and "1 of 3 files could not be read" in caplog.text
    monkeypatch.setattr(prediction, "output_names", listed)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.png"):
        (bad / name).write_text("not an image")
    with pytest.raises(ValueError, match="none of the 2 given images could be read"):
        predict_run(model, [bad], tmp_path / "p2", progress=False)
    assert not (tmp_path / "p2" / "scores.csv").exists()
