"""Multi-process training: the process group, this process's rank, and collectives for the losses.

``torchrun --nproc_per_node N -m medad train ...`` (or ``medad train --nproc N``, which starts
torchrun itself) runs N copies of the training; :func:`init_from_env` joins them into one process
group (gloo on CPU, nccl on CUDA). Each process trains on its share of every global batch, the
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and rank 0 alone
writes the run folder. Outside torchrun every function here is the single-process identity, so the
methods call them unconditionally; under ``torchrun --nproc_per_node 1`` they run the collectives
over the one process.

Contrastive losses compare each view with the other views of the *whole* batch: a method gathers
its embeddings with :func:`gather` before the loss. Every rank then computes the same global loss;
:func:`gather`'s backward sums the W identical gradients that reach a rank's own rows and DDP
divides by W, so the update equals the single-process gradient of the same global batch.

>>> import torch
>>> world_size(), rank(), is_main()
(1, 0, True)
>>> gather(torch.ones(2, 3)).shape  # one process: unchanged
torch.Size([2, 3])
"""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def launched() -> bool:
    """True inside a torchrun launch, of any number of processes (torchrun sets ``WORLD_SIZE`` and
    ``MASTER_ADDR``): ``--nproc 1`` runs the process-group path (DDP, nccl on a GPU) with one process."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def active() -> bool:
    """True when this process has joined a process group (of one process or more)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of training processes (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True for the process that writes files and logs (rank 0)."""
    return rank() == 0


def init_from_env(device: torch.device, timeout_minutes: float = 30) -> bool:
    """Join the process group torchrun describes in the environment; False (nothing done) when
    not launched by torchrun or already joined. gloo on CPU, nccl on CUDA (``device`` is this
    process's, :func:`medad.runtime.resolve_device`)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed: train with one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def shutdown() -> None:
    """Leave the process group (no-op when none is running)."""
    if dist.is_available() and dist.is_initialized():
        # a DistributedDataParallel wrapper left in a reference cycle (an interrupted run's
        # traceback) must go before its process group, or the process aborts at exit
        gc.collect()
        # every rank's collectives finished before any tears the group down: a rank that destroys
        # its gloo group while a peer still talks to it could abort at exit
        dist.barrier()
        dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's rows of the summed gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0] : ctx.rows[1]]


def gather(x: Tensor) -> Tensor:
    """The rows of ``x`` from every rank, concatenated in rank order (each rank must pass the same
    shape); gradients flow back to this rank's rows. Identity with one process."""
    if not active():
        return x
    if x.requires_grad:
        return _Gather.apply(x)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_ids(ids: Tensor, count: int) -> Tensor:
    """Gather per-image integer ids in ``[0, count)`` made unique across ranks (rank r adds r·count)."""
    return gather(ids + rank() * count)


def mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over the ranks (no gradient); ``x`` itself with one process."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank; ``obj`` with one process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        dist.barrier()
