"""Progress bars: one layout for every training loop, drawn only on a terminal.

The pre-training loop passes ``train.progress`` explicitly; detectors that train their own
networks inside ``fit`` (autoencoders, DDAD, IGD, f-AnoGAN) take the setting from the
surrounding :func:`progress_enabled` block, which :class:`~medad.model.AnomalyDetector` opens.

>>> with progress_enabled(False):
...     progress_bar().disable
True
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_ENABLED: ContextVar[bool] = ContextVar("medad_progress", default=True)


@contextmanager
def progress_enabled(enabled: bool) -> Iterator[None]:
    """Within this block, :func:`progress_bar` without an argument follows ``enabled``."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def progress_bar(enabled: bool | None = None) -> Progress:
    """A transient bar on stderr (description, bar, n/total, ``info`` field, time left); disabled
    unless ``enabled`` (default: the enclosing :func:`progress_enabled` setting) and stderr is a
    terminal."""
    on = _ENABLED.get() if enabled is None else enabled
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not (on and sys.stderr.isatty()),
        transient=True,
    )
