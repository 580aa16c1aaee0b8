"""Method ``none``: no self-supervised pre-training.

For detectors that train their own network (the reconstruction family: ``ae``, ``ddad``, ...),
and for scoring with an encoder as built: randomly initialised, or loaded from a local weights
file (``encoder.weights``). ``medad train --method none`` skips the training loop entirely.

``batchnorm: reestimate`` recomputes the encoder's BatchNorm running statistics on the training
normals (no gradient, nothing else changes): the honest floor of the self-supervised methods,
because a random encoder with the initial statistics (mean 0, variance 1) normalises real
features badly, while with re-estimated statistics it already ranks images by their low-level
intensity statistics (issue 14; docs/benchmarks.md reports both).

>>> import torch
>>> from medad.models.resnet import ResNetEncoder
>>> method = NoPretraining(ResNetEncoder(1, 8, "cifar"), batchnorm="reestimate")
>>> method.trains
False
>>> method.calibrate(torch.rand(6, 1, 16, 16) + 3.0)
>>> bool(method.encoder.bn1.running_mean.abs().sum() > 0)
True
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.methods.base import MethodParams, PretrainMethod
from medad.runtime import module_device


class NoPretrainingParams(MethodParams):
    batchnorm: Literal["init", "reestimate"] = Field(
        "init", description="BatchNorm running statistics: as initialised, or re-estimated on the training normals"
    )


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, images: Tensor, batch_size: int = 128) -> None:
    """Replace every BatchNorm layer's running mean and variance by their averages over
    ``images`` (train-mode forward passes, cumulative average: ``momentum=None``); the layers'
    weights and every other parameter stay as they are."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images) < 2:
        return
    momenta = [m.momentum for m in norms]
    device, was_training = module_device(encoder), encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    try:
        for batch in images.split(batch_size):
            if len(batch) >= 2:
                encoder(batch.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        encoder.train(was_training)


class NoPretraining(PretrainMethod):
    """Holds the encoder and trains nothing (optionally re-estimating its BatchNorm statistics)."""

    name: ClassVar[str] = "none"
    Params: ClassVar[type[MethodParams]] = NoPretrainingParams
    params: NoPretrainingParams
    trains: ClassVar[bool] = False

    def calibrate(self, images: Tensor) -> None:
        if self.params.batchnorm == "reestimate":
            reestimate_batchnorm(self.encoder, images)

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        raise RuntimeError("method 'none' has no training loss: the training loop is skipped for it")
