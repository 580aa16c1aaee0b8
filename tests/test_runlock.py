"""One run folder, one run: the lock is atomic, names its owner, survives nothing it should not,
and a training on a locked folder fails before writing anything."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medad.cli import app
from medad.runlock import LOCK_NAME, RunLock, RunLockedError

runner = CliRunner()


@pytest.fixture
def live_pid():
    """The pid of a process that runs during the test (not this one: it is the lock's owner)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": 0}))


def test_a_second_lock_on_the_same_folder_fails_and_the_first_is_released(tmp_path) -> None:
    folder = tmp_path / "run"
    with RunLock(folder) as lock:
        assert lock.held and json.loads((folder / LOCK_NAME).read_text())["pid"] > 0
        with pytest.raises(RunLockedError, match="in use by another run"):
            RunLock(folder).acquire()
        assert (folder / LOCK_NAME).exists()  # the failed attempt did not remove the owner's lock
    assert not (folder / LOCK_NAME).exists()
    with pytest.raises(ZeroDivisionError), RunLock(folder):
        1 / 0
    assert not (folder / LOCK_NAME).exists()  # released on errors too
    RunLock(folder).acquire().release()


def test_a_live_owner_is_named_a_dead_one_is_replaced_a_foreign_host_is_kept(tmp_path, live_pid, caplog) -> None:
    folder = tmp_path / "run"
    _write_lock(folder, live_pid)
    with pytest.raises(RunLockedError, match=f"process {live_pid} on"):
        RunLock(folder).acquire()
    dead = _dead_pid()
    _write_lock(folder, dead)
    with caplog.at_level(logging.WARNING, logger="medad"), RunLock(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] != dead
    assert f"stale lock of process {dead}" in caplog.text
    _write_lock(folder, dead, host="another-host.example")
    with pytest.raises(RunLockedError, match="another-host.example"):
        RunLock(folder).acquire()


def test_training_on_a_folder_another_run_holds_fails_and_writes_nothing(tmp_path, live_pid) -> None:
    data = tmp_path / "data"
    runner.invoke(app, ["synth", "--out", str(data), "--size", "32", "--n-train", "8",
                        "--n-test-normal", "2", "--n-test-abnormal", "2"])
    run = tmp_path / "run"
    _write_lock(run, live_pid)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--image-size", "32",
                                 "--epochs", "1", "--batch-size", "4", "--no-progress", "--set", "encoder.width=4"])
    assert result.exit_code != 0 and "in use by another run" in " ".join(result.output.split())
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
