"""What every self-supervised pre-training method provides.

A method is a pure ``nn.Module`` that owns the encoder and its training heads and turns a batch
of normal images into a loss. The training loop (``medad.train.loop``) does the rest: batching,
optimiser, progress, checkpoints, resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from medad.data.preprocessor import Preprocessor


class MethodParams(BaseModel):
    """Base class of each method's validated parameters."""

    model_config = ConfigDict(extra="forbid")


class PretrainMethod(nn.Module, ABC):
    """Base class; subclasses set ``name`` and ``Params`` and implement ``training_loss``.

    ``encoder`` maps images ``[N, C, H, W]`` to embeddings ``[N, D]`` and is what detectors use
    after training; everything else (projection heads, ...) exists only for the loss.
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    trains: ClassVar[bool] = True
    """False for ``none``: the encoder is used as built (random or ``encoder.weights``), untrained."""

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__()
        self.encoder = encoder
        self.params = self.Params(**params)
        self.preprocessor: Preprocessor | None = None
        """The run's input conversion (:class:`~medad.data.preprocessor.Preprocessor`), set by
        ``fit``: a method that reads images of its own (DINO's auxiliary negatives) brings them
        through it, so that they get the same size, channels and ``data.intensity`` scaling as the
        batches."""

    @abstractmethod
    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        """Loss terms for one batch of un-augmented images; key ``loss`` is what is minimised.

        Under ``torchrun`` ``images`` is this process's share of the global batch: a loss that
        compares images with each other gathers its embeddings first (:func:`medad.distributed.gather`)."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`training_loss`, so that DistributedDataParallel can wrap the method."""
        return self.training_loss(images)

    def calibrate(self, images: Tensor) -> None:
        """Called instead of training for a method that does not train (``trains`` False), with
        the training normals; e.g. ``none`` can re-estimate the encoder's BatchNorm statistics."""

    def on_train_start(self, total_steps: int, images: Tensor) -> None:
        """Called by the training loop once before training (also when resuming, after the state
        is loaded) with the number of optimiser steps of the whole run and the training images
        (CPU), for schedules that depend on the run's length or statistics of the training set."""

    def on_train_step(self, progress: float) -> None:
        """Called by the training loop before every step with the share of training done (0 → 1),
        for schedules that live in the method (e.g. a loss weight or a teacher temperature)."""

    def after_optimizer_step(self) -> None:
        """Called by the training loop after every optimiser step (e.g. an EMA teacher update)."""

    def diagnostics(self, val_images: Tensor) -> dict[str, float]:
        """Label-free training diagnostics of the trained encoder on validation normals, reported
        in metrics.json (e.g. CON2's context silhouette); empty by default."""
        return {}

    def example_figure(self, images: Tensor, path: Path) -> Path | None:
        """Write a PNG showing what the method trains on (e.g. its synthetic anomalies) for the
        report; ``None`` when the method has nothing to show."""
        return None
