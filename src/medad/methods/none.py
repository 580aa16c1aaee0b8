"""Method ``none``: no self-supervised pre-training.

For detectors that train their own network (the reconstruction family: ``ae``, ``ddad``, ...),
and for scoring with an encoder as built: randomly initialised, or loaded from a local weights
file (``encoder.weights``). ``medad train --method none`` skips the training loop entirely.

>>> from medad.models.resnet import ResNetEncoder
>>> NoPretraining(ResNetEncoder(1, 8, "cifar")).trains
False
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from medad.methods.base import PretrainMethod


class NoPretraining(PretrainMethod):
    """Holds the encoder and trains nothing."""

    name: ClassVar[str] = "none"
    trains: ClassVar[bool] = False

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        raise RuntimeError("method 'none' has no training loss: the training loop is skipped for it")
