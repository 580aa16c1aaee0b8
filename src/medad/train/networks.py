"""Mini-batch training of the networks that detectors own (autoencoders, DDAD ensembles, ASR-Net...).

Self-supervised encoders are trained by :mod:`medad.train.loop` (checkpoints, resume, selection);
a reconstruction detector trains its network inside ``fit`` with this small loop instead, because
that network is part of the detector's state and saved with it.

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
from typing import Callable

import torch
from torch import Tensor, nn

from medad.progress import progress_bar

log = logging.getLogger("medad")


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
    name: str = "network",
) -> list[float]:
    """Adam on ``loss_fn(batch)`` over shuffled mini-batches of ``images`` (moved to the module's
    device batch by batch); returns the mean loss per epoch. A trailing batch of one image is
    dropped (BatchNorm cannot train on it). Raises ``FloatingPointError`` on a non-finite loss.
    A progress bar named ``name`` shows epochs and loss on a terminal (see :mod:`medad.progress`).
    """
    if len(images) < 2:
        raise ValueError(f"training {name} needs at least 2 images, got {len(images)}")
    device = next(module.parameters()).device
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    losses = []
    with progress_bar() as progress:
        task = progress.add_task(name, total=epochs, info="")
        for epoch in range(1, epochs + 1):
            total, seen = 0.0, 0
            for idx in torch.randperm(len(images), generator=generator).split(batch_size):
                if len(idx) < 2:
                    continue
                loss = loss_fn(images[idx].to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{name}: loss became {loss.item()} at epoch {epoch}; lower its lr ({lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
            losses.append(total / seen)
            progress.update(task, advance=1, info=f"loss {losses[-1]:.5f}")
            log.debug("%s epoch %d/%d loss %.5f", name, epoch, epochs, losses[-1])
    module.eval()
    return losses
