"""The loop core that every training in medad runs on.

Pre-training (:func:`medad.train.loop.train_method`), the detectors' networks
(:func:`medad.train.networks.train_network`), IGD's autoencoder + critic and f-AnoGAN's WGAN-GP
differ in what one mini-batch step does and in what they keep between epochs, not in the loop:
:func:`run_epochs` draws each epoch's index batches, calls the caller's ``step`` on every batch,
averages what it returns (weighted by batch size), draws the progress bar, and calls the
caller's hooks before and after every epoch (checkpoints, validation, logging, schedules), and
hands every epoch's record to the experiment log (:mod:`medad.experiment_log`).
:func:`optimizer_step` is the one place that checks a loss is finite before stepping on it, where
reading it back is free (a CPU: :attr:`medad.device_policy.ComputePolicy.eager_checks`); on a GPU
the step values stay on the device and :func:`run_epochs` reads them, and checks the loss, once per
epoch, so that no step waits for the GPU. :func:`check_weights` catches weights that diverged while
the loss stayed finite (e.g. BatchNorm statistics overflowing at a huge learning rate); both say
what to do (:func:`divergence_hint`).

>>> import torch
>>> net = torch.nn.Linear(2, 1)
>>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> x = torch.rand(16, 2)
>>> g = torch.Generator().manual_seed(0)
>>> def step(idx, epoch, done):
...     return {"loss": optimizer_step(net(x[idx]).pow(2).mean(), opt, "toy: loss {loss} at epoch {epoch}", epoch)}
>>> history = run_epochs(step, lambda epoch: shuffled_batches(16, 4, g), epochs=3, name="toy")
>>> [h["epoch"] for h in history], history[-1]["loss"] < history[0]["loss"]
([1, 2, 3], True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medad import experiment_log
from medad.progress import progress_bar

Step = Callable[[Tensor, int, float], dict[str, "Tensor | float"]]
"""One mini-batch: ``step(indices, epoch, done)`` with ``done`` the share of the run finished
before this batch; returns the values to log for it (e.g. ``{"loss": tensor(0.31)}``), as 0-d
tensors left on their device, or floats."""


def divergence_hint(setting: str, lr: float) -> str:
    """What to do about a training that produced NaN/Inf: ``setting`` names the learning rate.

    >>> divergence_hint("train.lr / --lr", 1e6)
    'lower the learning rate (train.lr / --lr, now 1e+06) or check the input images'
    """
    return f"lower the learning rate ({setting}, now {lr:g}) or check the input images"


def check_weights(module: nn.Module, error: str) -> None:
    """Raise ``FloatingPointError(error.format(name=...))`` naming the first parameter or buffer of
    ``module`` that holds NaN/Inf: a loss can stay finite while weights diverge (normalised
    embeddings, BatchNorm), and a checkpoint must not be written from them."""
    weights = {name: value for name, value in module.state_dict().items() if value.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in weights.values()]) if weights else torch.ones(0)
    if not finite.all():  # one read back from the device for the whole module
        raise FloatingPointError(error.format(name=list(weights)[int((~finite).nonzero()[0])]))


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, error: str, epoch: int, *,
                   check: bool = True) -> Tensor:
    """Back-propagate ``loss`` and step ``optimizer``; return the detached loss. With ``check`` a
    non-finite loss raises ``FloatingPointError(error.format(loss=..., epoch=epoch))`` before any
    weight changes; without it (on a GPU, where the check would wait for the device) the loss is
    checked where :func:`run_epochs` reads the epoch's mean."""
    if check and not torch.isfinite(loss):
        raise FloatingPointError(error.format(loss=loss.item(), epoch=epoch))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A permutation of ``range(n)`` drawn from ``generator``, split into batches of ``batch_size``,
    without batches of a single image (BatchNorm cannot train on one).

    >>> [len(b) for b in shuffled_batches(9, 4, torch.Generator().manual_seed(0))]
    [4, 4]
    """
    return [idx for idx in torch.randperm(n, generator=generator).split(batch_size) if len(idx) >= 2]


def run_epochs(
    step: Step,
    batches: Callable[[int], Sequence[Tensor]],
    *,
    epochs: int,
    start: int = 0,
    name: str = "training",
    show: bool | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    log_as: str | None = None,
    live: bool = True,
    error: str = "{name}: loss became {loss} at epoch {epoch}; lower the learning rate or check the input images",
) -> list[dict[str, Any]]:
    """Epochs ``start + 1 .. epochs`` of ``step`` over ``batches(epoch)``; returns one record per
    epoch: ``epoch``, the batch-size-weighted mean of every value ``step`` returned, ``seconds``
    and ``images`` (seen in the epoch). ``before_epoch(epoch)`` runs before the epoch's batches are
    drawn, ``after_epoch(record)`` after its last step and may add to the record. The record then
    goes to the experiment log (:func:`medad.experiment_log.current`, tags ``<log_as>/<key>``,
    ``log_as`` defaulting to ``name``), and ``checkpoint(record)`` runs last: an epoch saved in a
    checkpoint (from which a resumed run starts at the next epoch) is always in the log too. The
    bar (``show``: see :func:`medad.progress.progress_bar`) shows ``name``, the epoch, the batches
    and, when ``live`` (reading the values back is free: a CPU), the running loss.

    The values are summed in float64 where the step left them and read once per epoch; a
    non-finite mean ``loss`` raises ``FloatingPointError(error.format(name=..., loss=..., epoch=...))``
    before ``after_epoch`` (so before that epoch's checkpoint).
    """
    history: list[dict[str, Any]] = []
    with progress_bar(show) as progress:
        task = progress.add_task(name, total=None, info="")
        for epoch in range(start + 1, epochs + 1):
            if before_epoch is not None:
                before_epoch(epoch)
            epoch_batches = batches(epoch)
            progress.reset(task, total=len(epoch_batches), description=f"{name} {epoch}/{epochs}")
            t0, seen, sums = time.perf_counter(), 0, {}
            for i, idx in enumerate(epoch_batches):
                values = step(idx, epoch, (epoch - 1 + i / len(epoch_batches)) / epochs)
                seen += len(idx)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + torch.as_tensor(value, dtype=torch.float64) * len(idx)
                info = f"loss {float(sums.get('loss', math.nan)) / seen:.4f}" if live else ""
                progress.update(task, advance=1, info=info)
            means = {k: float(v) / max(seen, 1) for k, v in sums.items()}  # the epoch's one read from the device
            if not math.isfinite(means.get("loss", 0.0)):
                raise FloatingPointError(error.format(name=name, loss=means["loss"], epoch=epoch))
            record: dict[str, Any] = {"epoch": epoch, **means, "seconds": time.perf_counter() - t0, "images": seen}
            if after_epoch is not None:
                after_epoch(record)
            experiment_log.current().epoch(log_as or name, record)
            if checkpoint is not None:
                checkpoint(record)
            history.append(record)
    return history
