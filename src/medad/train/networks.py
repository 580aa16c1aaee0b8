"""Mini-batch training of the networks that detectors own (autoencoders, DDAD ensembles, ASR-Net...).

Self-supervised encoders are trained by :mod:`medad.train.loop` (checkpoints, resume, selection);
a reconstruction detector trains its network inside ``fit`` with :func:`train_network` instead,
because that network is part of the detector's state and saved with it. Both run on the loop
core of :mod:`medad.train.core`.

Inside a :func:`network_checkpoints` block (which :meth:`medad.model.AnomalyDetector.fit` opens
beside its pre-training checkpoint), every network is saved atomically once trained, and on resume
a network already saved by a run with the same fingerprint is loaded instead of trained again, so
an interrupted DDAD fit (seven networks) loses at most the network it was training. Detectors
with their own loop (IGD, the f-AnoGAN GAN) save and restore it every epoch through
:class:`LoopCheckpoint`.

>>> import torch
>>> from torch import nn
>>> net = nn.Linear(2, 1)
>>> x = torch.rand(32, 2)
>>> losses = train_network(net, x, lambda b: (net(b) - b.sum(1, keepdim=True)).pow(2).mean(),
...                        epochs=60, lr=0.05, batch_size=8, seed=0)
>>> losses[-1] < 0.01 * losses[0]
True
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from medad.device_policy import policy_for
from medad.train.checkpoint import load_checkpoint, save_checkpoint, state_mismatch
from medad.train.core import check_weights, divergence_hint, optimizer_step, run_epochs, shuffled_batches

log = logging.getLogger("medad")


@dataclass
class _NetworkStore:
    directory: Path
    fingerprint: str
    resume: bool
    count: int = 0

    def next_path(self, name: str) -> Path:
        """``NN-<name>.pt``: networks are numbered in the (deterministic) order they are trained."""
        self.count += 1
        return self.directory / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.pt"

    def restore(self, path: Path, name: str, epochs: int, apply: Callable[[dict], object]) -> dict | None:
        """The saved metadata after ``apply(state)`` of the checkpoint at ``path``; ``None`` (start
        from scratch, nothing applied) when not resuming, without a file, or when the file is
        unreadable or from other settings. A state that does not fit is an error: it may have
        been applied in part, so training from there would not be training from scratch."""
        if not (self.resume and path.is_file()):
            return None
        try:
            state, meta = load_checkpoint(path)
        except (ValueError, FileNotFoundError) as exc:  # broken, or killed before its .json was written
            log.warning("%s: cannot resume from %s (%s); training it again", name, path, exc)
            return None
        if (meta.get("fingerprint"), meta.get("name"), meta.get("epochs")) != (self.fingerprint, name, epochs):
            log.warning("%s: %s was saved with other settings; training it again", name, path)
            return None
        try:
            apply(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"{name}: {path} does not fit this network ({state_mismatch(exc)}); delete it or run "
                             "without --resume") from exc
        log.info("%s: loaded from %s (resumed)", name, path)
        return meta

    def save(self, path: Path, name: str, epochs: int, state: dict, **meta: object) -> None:
        save_checkpoint(path, state, {"fingerprint": self.fingerprint, "name": name, "epochs": epochs, **meta})


_STORE: ContextVar[_NetworkStore | None] = ContextVar("medad_network_checkpoints", default=None)


@contextmanager
def network_checkpoints(directory: str | Path, fingerprint: str = "", resume: bool = False) -> Iterator[None]:
    """Within this block :func:`train_network` saves every trained network to ``directory`` and,
    with ``resume``, loads a network saved there under the same ``fingerprint`` (and name and
    epochs) instead of training it. Without ``resume`` the folder is emptied first.
    """
    directory = Path(directory)
    if not resume:
        shutil.rmtree(directory, ignore_errors=True)
    token = _STORE.set(_NetworkStore(directory, fingerprint, resume))
    try:
        yield
    finally:
        _STORE.reset(token)


def train_network(
    module: nn.Module,
    images: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    cosine: bool = False,
    name: str = "network",
) -> list[float]:
    """Adam on ``loss_fn(batch)`` over shuffled mini-batches of ``images`` (moved to the module's
    device batch by batch); returns the mean loss per epoch. With ``cosine`` the learning rate
    falls from ``lr`` to 0 over the run on a cosine, step by step (Loshchilov & Hutter 2017). A
    trailing batch of one image is dropped (BatchNorm cannot train on it). Raises
    ``FloatingPointError`` on a non-finite loss or weights. A progress bar named ``name`` shows epochs and loss
    on a terminal (see :mod:`medad.progress`). Inside :func:`network_checkpoints` the trained
    network is saved, or loaded when resuming.
    """
    if len(images) < 2:
        raise ValueError(f"training {name} needs at least 2 images, got {len(images)}")
    store = _STORE.get()
    path = None
    if store is not None:
        path = store.next_path(name)
        saved = store.restore(path, name, epochs, lambda state: module.load_state_dict(state["module"]))
        if saved is not None:
            module.eval()
            return [float(v) for v in saved["losses"]]
    device = next(module.parameters()).device
    policy = policy_for(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * sum(len(idx) >= 2 for idx in torch.arange(len(images)).split(batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if cosine else None
    generator = torch.Generator().manual_seed(seed)
    hint = divergence_hint("the detector's params.lr", lr)
    error = f"{name}: loss became {{loss}} at epoch {{epoch}}; {hint}"

    def step(idx: Tensor, epoch: int, done: float) -> dict[str, Tensor]:
        with policy.autocast():
            loss = loss_fn(images[idx].to(device))
        value = optimizer_step(loss, optimizer, error, epoch, check=policy.eager_checks)
        if schedule is not None:
            schedule.step()
        return {"loss": value}

    def logged(record: dict) -> None:
        check_weights(module, f"{name}: the weights ({{name}}) became NaN/Inf in epoch {record['epoch']}; {hint}")
        log.debug("%s epoch %d/%d loss %.5f", name, record["epoch"], epochs, record["loss"])

    module.train()
    history = run_epochs(step, lambda epoch: shuffled_batches(len(images), batch_size, generator),
                         epochs=epochs, name=name, after_epoch=logged, live=policy.eager_checks, error=error)
    losses = [record["loss"] for record in history]
    module.eval()
    if store is not None and path is not None:  # inside network_checkpoints()
        store.save(path, name, epochs, {"module": module.state_dict()}, losses=losses)
    return losses


class LoopCheckpoint:
    """Epoch checkpoints for a detector's own training loop (IGD, the f-AnoGAN GAN).

    Inside :func:`network_checkpoints`, :meth:`save` writes the state of ``parts`` (modules and
    optimisers by key), the random ``generator`` and integer counters after an epoch, and
    :meth:`restore` loads the last one on resume and returns its counters (``{"epoch": 0}`` when
    there is none, i.e. start from scratch). Outside such a block both do nothing.

    >>> net = nn.Linear(2, 1)
    >>> ckpt = LoopCheckpoint("net", 5, {"net": net}, torch.Generator())
    >>> ckpt.restore()
    {'epoch': 0}
    """

    def __init__(self, name: str, epochs: int, parts: dict[str, nn.Module | torch.optim.Optimizer],
                 generator: torch.Generator):
        self.store = _STORE.get()
        self.path = self.store.next_path(name) if self.store is not None else None
        self.name, self.epochs, self.parts, self.generator = name, epochs, parts, generator

    def restore(self) -> dict[str, int]:
        if self.store is None or self.path is None:
            return {"epoch": 0}

        def apply(state: dict) -> None:
            for key, part in self.parts.items():
                part.load_state_dict(state["parts"][key])
            self.generator.set_state(state["rng"])

        meta = self.store.restore(self.path, self.name, self.epochs, apply)
        return {"epoch": 0} if meta is None else {k: int(v) for k, v in meta["counters"].items()}

    def save(self, **counters: int) -> None:
        if self.store is None or self.path is None:
            return
        state = {"parts": {key: part.state_dict() for key, part in self.parts.items()},
                 "rng": self.generator.get_state()}
        self.store.save(self.path, self.name, self.epochs, state, counters=counters)
