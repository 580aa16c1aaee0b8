"""The device and precision policy, in one place: which dtype the networks compute in, where the
training images are held, and when values are read back to the host.

Everything that differs between a CPU and a GPU run is decided here, from the device and
``train.precision``; methods, detectors and loops ask the policy and never test for CUDA:

- **Precision.** ``auto`` computes the networks' forward passes (and so their backward passes)
  under bf16 autocast on a CUDA device that supports it and in fp32 elsewhere; ``bf16`` and
  ``fp32`` force one. Weights, optimiser state and gradients stay fp32 (autocast casts the
  weights per operation), losses are reduced in fp32 by autocast's own rules, and every statistic
  a detector fits or scores with (means, covariances, Mahalanobis distances, nearest-neighbour
  distances, maps) is computed outside autocast from ``.float()`` outputs, in fp32 or fp64. On a
  CPU, ``auto`` is fp32: CPU figures are the same as before the policy existed.
- **Training images** are held on the device once (:meth:`ComputePolicy.stage`), so that a step
  gathers its batch there instead of copying it from the host; on a CPU they stay as they are.
- **Host reads.** Reading a value from a GPU waits for all the work queued before it. On a CPU it
  is free, so the loops check every step's loss before the optimiser steps on it; on a GPU
  (``eager_checks`` false) the step losses stay on the device and are read, and checked, once per
  epoch where they are logged: a non-finite loss then stops the run at the end of its epoch,
  before that epoch's checkpoint is written.
- **cuDNN autotuning** (``torch.backends.cudnn.benchmark``) is switched on when a CUDA policy is
  activated: the image size is fixed within a run, so the fastest convolution algorithms are
  found once.

Detectors compute their encoder features under :func:`autocast_for`, which follows the policy
:meth:`ComputePolicy.activate`-d by the caller (:class:`medad.model.AnomalyDetector` activates its
own around fitting and scoring); with none active, networks compute in fp32.

>>> policy = ComputePolicy.resolve("cpu")
>>> policy.dtype is None, policy.eager_checks
(True, True)
>>> ComputePolicy.resolve("cpu", "bf16").dtype
torch.bfloat16
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Precision = Literal["auto", "fp32", "bf16"]
STAGE_DTYPE = torch.float16
"""Training images on an accelerator: [0, 1] pixels to 2^-11 (finer than an 8-bit source and than the
bf16 the convolutions compute in) at half of float32's memory; uint8 would quantise 16-bit and resampled
images to 1/255."""
STAGE_SHARE = 0.5
"""Largest share of the device's free memory the staged training images may take; beyond it they stay
on the host (pinned) and each batch is copied."""

_ACTIVE: ContextVar[ComputePolicy | None] = ContextVar("medad_compute_policy", default=None)


@dataclass(frozen=True)
class ComputePolicy:
    """Where and in which dtype networks compute (see the module docstring).

    ``dtype`` is the autocast dtype (``None``: fp32); ``eager_checks`` says whether values may be
    read back to the host at every step for free.
    """

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def resolve(cls, device: torch.device | str, precision: Precision = "auto") -> ComputePolicy:
        """The policy for ``device`` and ``train.precision``.

        >>> ComputePolicy.resolve("cpu", "fp32")
        ComputePolicy(device=device(type='cpu'), dtype=None)
        """
        device = _indexed(torch.device(device))
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
        if precision == "auto":
            cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            return cls(device, torch.bfloat16 if cuda_bf16 else None)
        return cls(device, torch.bfloat16 if precision == "bf16" else None)

    @property
    def eager_checks(self) -> bool:
        """Whether a value can be read back to the host at every step at no cost (a CPU)."""
        return self.device.type == "cpu"

    def autocast(self) -> AbstractContextManager:
        """The context networks compute in: autocast to ``dtype``, or nothing for fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextmanager
    def activate(self) -> Iterator[ComputePolicy]:
        """Make this the policy :func:`autocast_for` follows inside the block (and on CUDA switch on
        cuDNN autotuning)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def stage(self, images: Tensor) -> StagedImages:
        """``images`` ``[N, C, H, W]`` (float32, in [0, 1]) held where the training steps read them."""
        return StagedImages(images, self.device)


def policy_for(device: torch.device) -> ComputePolicy:
    """The active policy if it is for ``device``'s type, else fp32 on ``device``: what a detector's
    own training loop on ``device`` follows.

    >>> policy_for(torch.device("cpu")).dtype is None
    True
    """
    policy = _ACTIVE.get()
    if policy is None or policy.device.type != torch.device(device).type:
        return ComputePolicy.resolve(device, "fp32")
    return policy


def autocast_for(device: torch.device) -> AbstractContextManager:
    """Autocast for a network on ``device`` under the active policy (:func:`policy_for`); fp32
    (nothing) when no policy is active or it is for another device type.

    >>> with ComputePolicy.resolve("cpu", "bf16").activate():
    ...     with autocast_for(torch.device("cpu")):
    ...         y = torch.nn.Linear(4, 2)(torch.rand(3, 4))
    >>> y.dtype
    torch.bfloat16
    """
    return policy_for(device).autocast()


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as the numbered device it means (tensors report ``cuda:N``)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class StagedImages:
    """Training images held once where the steps read them: as given on a CPU; on an accelerator
    in :data:`STAGE_DTYPE` on the device when they take at most :data:`STAGE_SHARE` of its free
    memory, else in pinned host memory copied per batch. Indexing gives float32 on the device.

    >>> staged = StagedImages(torch.rand(5, 1, 4, 4), torch.device("cpu"))
    >>> len(staged), staged[torch.tensor([0, 2])].shape
    (5, torch.Size([2, 1, 4, 4]))
    """

    def __init__(self, images: Tensor, device: torch.device):
        self.device = device = _indexed(device)
        if device.type == "cpu":
            self.images = images
        else:
            free, _ = torch.cuda.mem_get_info(device)
            staged = images.to(STAGE_DTYPE)
            fits = staged.numel() * staged.element_size() <= STAGE_SHARE * free
            self.images = staged.to(device) if fits else staged.pin_memory()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Tensor) -> Tensor:
        """The images at ``index`` as float32 on the device."""
        if self.images.device == self.device:  # a host index copied without waiting for the device
            return self.images[index.to(self.device, non_blocking=True)].float()
        return self.images[index].to(self.device, non_blocking=True).float()
