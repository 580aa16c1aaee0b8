"""Multi-process training (issue 13 item 5): torchrun with 2 CPU processes (gloo) against one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from medad import distributed
from medad.cli import app
from medad.train.loop import epoch_batches

from tolerance import tolerance  # tests/ is on sys.path

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _worker(tmp_path: Path, nproc: int, *flags: str) -> dict:
    out = tmp_path / f"result-{nproc}{'-'.join(flags)}.json"
    command = (TORCHRUN if nproc > 1 else [sys.executable]) + [str(WORKER), str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_one_process_helpers_are_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x) is x and distributed.mean(x) is x
    assert distributed.gather_objects("a") == ["a"] and distributed.broadcast_object("a") == "a"
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)


def test_ranks_split_every_global_batch_evenly():
    whole = epoch_batches(21, 8, seed=3, epoch=2)
    shards = [epoch_batches(21, 8, 3, 2, rank=r, world=3) for r in range(3)]
    assert [len(b) for b in whole] == [8, 8] and all(len(b) == 2 for s in shards for b in s)  # 8 → 6 per batch
    for k, batch in enumerate(whole):
        parts = torch.cat([s[k] for s in shards])
        assert len(set(parts.tolist())) == 6 and set(parts.tolist()) <= set(batch.tolist())


def test_two_processes_train_exactly_like_one_and_resume_exactly(tmp_path):
    """The gathered contrastive loss and DDP's gradient average give the single-process update of
    the same global batch: a deterministic toy loss agrees to rounding over 3 epochs. With random
    augmentations, an interrupted 2-process run resumed from its checkpoint ends where the
    uninterrupted one does (every rank's RNG state is in the checkpoint)."""
    one, two = _worker(tmp_path, 1), _worker(tmp_path, 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # float32 either way, but two processes sum each step's gradient (DDP's all-reduce of two halves)
    # and the gathered NT-Xent over the 16 views of a global batch in another order than one process;
    # 3 epochs x 6 steps carry that rounding forward, on losses ~2 and weights < 1 (measured: 5e-7;
    # ungathered negatives or a summed instead of averaged gradient move them by > 1e-2)
    tol = tolerance(torch.float32, terms=18 * 16)
    for key in ("loss", "val_loss", "weight"):
        np.testing.assert_allclose(two["straight"][key], one["straight"][key], **tol)
    assert one["straight"]["loss"][-1] < one["straight"]["loss"][0]  # it did learn
    noisy = _worker(tmp_path, 2, "noise")
    assert noisy["straight"]["loss"] != two["straight"]["loss"]  # the noise is drawn
    for key in ("loss", "weight"):
        assert noisy["resumed"][key] == noisy["straight"][key]


def test_medad_train_nproc_2_writes_one_run_with_the_loss_curve_of_one_process(tmp_path):
    """``medad train --nproc 2`` on the phantom: one run folder written by rank 0, a checkpoint
    that knows it came from 2 processes, and per-epoch contrastive losses within 10 % of a
    single-process run with the same global batch (augmentations and per-process BatchNorm
    statistics differ; without the gathered negatives the loss would drop from ≈ log 31 to
    ≈ log 15, 20 % lower)."""
    data = tmp_path / "data"
    CliRunner().invoke(app, ["-q", "synth", "--out", str(data), "--size", "32", "--n-train", "64",
                             "--n-test-normal", "8", "--n-test-abnormal", "8"])
    args = ["train", "--data", str(data), "--method", "contrastive", "--detector", "mahalanobis", "--epochs", "3",
            "--batch-size", "16", "--image-size", "32", "--set", "encoder.width=8", "--no-progress",
            "--log", "tensorboard"]  # an option torchrun would take for its --log-dir: medad passes it on
    runs = {}
    for nproc in (None, 1, 2):  # None: a plain process; 1: torchrun, a process group and DDP of one process
        out = tmp_path / f"run{nproc}"
        extra = [] if nproc is None else ["--nproc", str(nproc)]
        done = subprocess.run([sys.executable, "-m", "medad", *args, "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("starting" in done.stderr) == (nproc is not None)  # torchrun started
        runs[nproc] = json.loads((out / "model" / "model.json").read_text())["history"]
        assert json.loads((out / "metrics.json").read_text())["image_auroc"] is not None
        assert not (out / ".lock").exists()
    assert done.stderr.count("report:") == 1  # rank 0 alone reports
    # collectives over one process copy their input: the same code as the plain run, so the same numbers
    assert [h["loss"] for h in runs[1]] == [h["loss"] for h in runs[None]]
    meta = json.loads((tmp_path / "run2" / "checkpoints" / "last.json").read_text())
    assert meta["world_size"] == 2
    one, two = (np.array([h["loss"] for h in runs[n]]) for n in (1, 2))
    assert np.all(np.abs(two - one) < 0.1 * one), (one, two)
    # rank 0 alone logs: one event file, one value per epoch, the run's (global) loss
    [events] = (tmp_path / "run2" / "tensorboard").glob("events.out.tfevents.*")
    logged = [(e.step, e.value) for e in EventAccumulator(str(events.parent)).Reload().Scalars("pretrain/loss")]
    assert [step for step, _ in logged] == [1, 2, 3]
    np.testing.assert_allclose([value for _, value in logged], two, **tolerance(torch.float32))

    # a 2-process checkpoint is not resumed by one process
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run2"), "--resume"])
    assert result.exit_code == 2 and "2 training process(es)" in result.output


def _processes_naming(text: str) -> list[int]:
    """The pids of the live processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or gone
            continue
        pids += [int(entry.name)] if entry.name.isdigit() and text in command else []
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc (Linux)")
def test_sigterm_to_medad_train_nproc_stops_torchrun_and_its_workers(tmp_path):
    """Issue 27's leftover: SIGTERM to the ``--nproc`` parent killed torchrun outright and left the
    training workers running, orphaned. Now torchrun is told, stops them, and the parent says so."""
    data, out = tmp_path / "data", tmp_path / "run-sigterm"
    CliRunner().invoke(app, ["-q", "synth", "--out", str(data), "--size", "32", "--n-train", "64",
                             "--n-test-normal", "4", "--n-test-abnormal", "4"])
    parent = subprocess.Popen(
        [sys.executable, "-m", "medad", "train", "--data", str(data), "--out", str(out), "--method", "contrastive",
         "--detector", "mahalanobis", "--epochs", "500", "--batch-size", "16", "--image-size", "32",
         "--set", "encoder.width=8", "--no-progress", "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "last.json").exists():  # the workers are in their training loop
            assert parent.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        assert len(_processes_naming(str(out))) >= 3  # medad, torchrun, the two workers
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=150)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 143 and "interrupted (SIGTERM)" in output, output[-3000:]
    deadline = time.monotonic() + 30
    while (left := _processes_naming(str(out))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes left running: {left}"
    assert not (out / "metrics.json").exists()  # the run does not look finished


@pytest.mark.parametrize("batch_size", [15, 2])
def test_a_global_batch_that_does_not_split_is_refused(tmp_path, batch_size, monkeypatch):
    from medad.config import TrainConfig
    from medad.train.loop import train_method

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        train_method(object(), torch.rand(40, 1, 4, 4), None, TrainConfig(batch_size=batch_size, progress=False))
