"""Experiment logs: every epoch's training values and a run's final figures, where a viewer shows them.

The training loops do not know whether anything is logged: the loop core
(:func:`medad.train.core.run_epochs`) hands each epoch's record — the values it has already read
back to the host, once per epoch — to :func:`current`, the log of the innermost :func:`logging_to`
block, and outside any block to an :class:`ExperimentLog` that keeps nothing. ``medad train --log
tensorboard`` (``train.log``) opens a :class:`TensorBoardLog` on the run's ``tensorboard/`` folder,
on rank 0 only (:mod:`medad.pipeline`). From Python, around any fit::

    with logging_to(TensorBoardLog("runs/x/tensorboard")):
        AnomalyDetector(epochs=5).fit(images)

Tags are ``<prefix>/<key>``: ``pretrain/loss``, ``pretrain/val_loss``, ``pretrain/lr``,
``pretrain/sensitivity_score`` ..., each detector network under its own name (``dae/loss``,
``ddad_NDM_0/loss``), and ``final/<key>`` for the numbers of metrics.json. The step is the epoch.

>>> tags({"epoch": 3, "loss": 0.5, "sensitivity": 0.6, "selected": True, "val": float("nan")}, "pretrain",
...      HISTORY_NAMES)
{'pretrain/loss': 0.5, 'pretrain/sensitivity_score': 0.6}
>>> tags({"image_auroc": 0.9, "scores": {"nnd": {"image_ap": 0.8}}, "method": "ccd"}, "final")
{'final/image_auroc': 0.9, 'final/scores/nnd/image_ap': 0.8}
>>> current().epoch("pretrain", {"epoch": 1, "loss": 0.5})  # outside logging_to: kept nowhere
"""

from __future__ import annotations

import importlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

HISTORY_NAMES = {"sensitivity": "sensitivity_score", "sensitivity_se": "sensitivity_score_se"}
"""Epoch record keys logged under the name metrics.json gives them: Rafiee's sensitivity score is
not the true-positive rate ``final/sensitivity``."""

EVENTS = "events.out.tfevents.*"
"""TensorBoard's event file names (what :func:`clear_events` deletes)."""


def tags(values: Mapping[str, Any], prefix: str, renamed: Mapping[str, str] | None = None) -> dict[str, float]:
    """The finite numbers of ``values`` (not booleans, not ``epoch``: the step), nested mappings
    flattened, as ``{"<prefix>/<key>": value}``, a key in ``renamed`` under its new name, with
    characters other than letters, digits and ``_ . - /`` replaced by ``_`` (a network named
    ``ddad NDM[0]`` logs as ``ddad_NDM_0``)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        tag = f"{prefix}/{(renamed or {}).get(key, key)}"
        if isinstance(value, Mapping):
            out.update(tags(value, tag))
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"
              and math.isfinite(value)):
            out[re.sub(r"[^A-Za-z0-9_.\-/]+", "_", tag).strip("_")] = float(value)
    return out


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | float | int | bool]:
    """A config as ``{"dotted.key": value}`` with scalar values (lists, None and the like as JSON),
    the form TensorBoard's hyper-parameter table takes.

    >>> flat_config({"train": {"lr": 0.1, "log": ["tensorboard"]}, "preset": None})
    {'train.lr': 0.1, 'train.log': '["tensorboard"]', 'preset': 'null'}
    """
    out: dict[str, str | float | int | bool] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


class ExperimentLog:
    """Where the training loops and the pipeline send what they log; this one keeps nothing (the
    log outside any :func:`logging_to` block). :class:`TensorBoardLog` writes it down."""

    def epoch(self, prefix: str, record: Mapping[str, Any]) -> None:
        """Log the numbers of one epoch's history ``record`` (:func:`tags`) at step ``record["epoch"]``."""

    def final(self, metrics: Mapping[str, Any], config: Mapping[str, Any], step: int) -> None:
        """Log a run's final figures (the numbers of its ``metrics``, as ``final/...``) and its ``config``."""

    def close(self) -> None:
        """Write out what is pending and release the files."""


_CURRENT: ContextVar[ExperimentLog] = ContextVar("medad_experiment_log", default=ExperimentLog())


def current() -> ExperimentLog:
    """The log of the innermost :func:`logging_to` block (one that keeps nothing outside any)."""
    return _CURRENT.get()


@contextmanager
def logging_to(log: ExperimentLog) -> Iterator[ExperimentLog]:
    """Within this block :func:`current` is ``log``; it is closed at the end."""
    token = _CURRENT.set(log)
    try:
        yield log
    finally:
        _CURRENT.reset(token)
        log.close()


def open_log(kinds: list[str] | tuple[str, ...], directory: str | Path) -> ExperimentLog:
    """The log ``kinds`` (``train.log``) ask for, writing to ``directory``: a :class:`TensorBoardLog`
    for ``tensorboard``, else one that keeps nothing."""
    return TensorBoardLog(directory) if "tensorboard" in kinds else ExperimentLog()


def check_available(kinds: list[str] | tuple[str, ...]) -> None:
    """Raise the one-line error of a log in ``kinds`` whose package is missing, before any work starts."""
    if "tensorboard" in kinds:
        _tensorboard()


def clear_events(directory: str | Path) -> None:
    """Delete the TensorBoard event files in ``directory`` (nothing else, not the folder): a run
    that starts over must not continue the curves of the one it replaces."""
    for path in Path(directory).glob(EVENTS):
        path.unlink()


def _tensorboard() -> Any:
    """``torch.utils.tensorboard`` (lazily: the tensorboard package is imported only to log)."""
    try:
        tensorboard = importlib.import_module("torch.utils.tensorboard")
    except ImportError as exc:
        raise RuntimeError(
            f"--log tensorboard (train.log) needs the tensorboard package, which cannot be imported ({exc}); "
            "install it with `pip install tensorboard` (or medad[tensorboard]), or leave out --log"
        ) from None
    return tensorboard


def logged_steps(directory: str | Path) -> set[tuple[str, int]]:
    """The (tag, step) pairs in the TensorBoard event files of ``directory``; a record cut short
    by a killed run ends its file's reading."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return {(value.tag, event.step) for path in sorted(Path(directory).glob(EVENTS))
            for event in LegacyEventFileLoader(str(path)).Load() for value in event.summary.value}


class TensorBoardLog(ExperimentLog):
    """TensorBoard event files in ``directory`` (``tensorboard --logdir DIRECTORY``): epochs and
    final figures as scalars, the config as text and, with the final figures as its metrics, as
    hyper-parameters (the HPARAMS tab compares runs: ``tensorboard --logdir runs``).

    Each process writes a new event file and TensorBoard reads the folder's files as one run, so a
    resumed run continues the curves: a (tag, step) already in the folder is not written again,
    neither the epochs a killed run logged after its last checkpoint and trains again nor a
    finished run's final figures. Files are flushed after every epoch, so a killed run keeps what
    it logged.
    """

    def __init__(self, directory: str | Path):
        tensorboard = _tensorboard()
        self.directory = Path(directory)
        self._summary = tensorboard.summary
        self._seen = logged_steps(self.directory)
        self._wait_for_a_later_second()
        self._writer = tensorboard.SummaryWriter(log_dir=str(self.directory))

    def _wait_for_a_later_second(self) -> None:
        """Event files are read in name order and named by the second they were opened in: a new
        file must sort after the folder's files (only a resume within a second of the run it
        continues waits, for less than a second)."""
        opened = [int(m[1]) for p in self.directory.glob(EVENTS) if (m := re.match(r"events\.out\.tfevents\.(\d+)",
                                                                                   p.name))]
        delay = max(opened, default=0) + 1 - time.time()
        if 0 < delay <= 2:  # a file of this second (one from a clock far ahead is not waited for)
            time.sleep(delay)

    def _write(self, summary: Any, step: int) -> None:
        """Write the values of ``summary`` whose (tag, step) the folder does not hold yet."""
        fresh = [value for value in summary.value if (value.tag, step) not in self._seen]
        if fresh:
            del summary.value[:]
            summary.value.extend(fresh)
            self._writer.file_writer.add_summary(summary, step)
            self._seen |= {(value.tag, step) for value in fresh}

    def epoch(self, prefix: str, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        for tag, value in tags(record, prefix, HISTORY_NAMES).items():
            self._write(self._summary.scalar(tag, value), step)
        self._writer.flush()

    def final(self, metrics: Mapping[str, Any], config: Mapping[str, Any], step: int) -> None:
        figures = tags(metrics, "final")
        for tag, value in figures.items():
            self._write(self._summary.scalar(tag, value), step)
        text = yaml.safe_dump(dict(config), sort_keys=False)  # indented: a code block in TensorBoard's markdown
        self._write(self._summary.text("config", "\n".join("    " + line for line in text.splitlines())), step)
        for part in self._summary.hparams(flat_config(config), figures):
            self._write(part, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
