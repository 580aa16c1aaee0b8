"""Base class of the detectors that train their own network on the normal images (AE family, DDAD,
IGD, f-AnoGAN): they produce a pixel anomaly map per image and reduce it to an image score.

The network is built in ``fit`` from the training images' channels and size, and these are kept
in the buffer ``input_shape``, so a saved detector rebuilds the same network before its weights
are loaded (``load_state_dict`` on a fresh detector just works, as for the other detectors). A
subclass whose networks depend on more than the input shape lists the buffers that say so in
``statistics``; they are loaded before ``build`` is called.
Networks train with :func:`medad.train.networks.train_network`. The image score is the mean of
the map by default (the MedIAnomaly convention) or its max (``reduction``); metrics.json says
which was used (``image_score_from_map``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import Detector, DetectorOutput, DetectorParams
from medad.detectors.maps import Reduction, reduce_maps
from medad.runtime import batches


class ReconstructionParams(DetectorParams):
    epochs: int = Field(50, ge=1, description="training epochs of the detector's network(s)")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(64, ge=2, description="mini-batch size for training and scoring")
    seed: int = Field(0, description="seed of weight initialisation and data order (in a run: train.seed unless set)")
    reduction: Reduction = Field("mean", description="reduction of the pixel map to the image score")


class ReconstructionDetector(Detector):
    """Subclasses implement ``build`` (create the networks for ``channels`` x ``size`` images),
    ``train_networks`` and ``anomaly_map``; this class does the bookkeeping, batching and reduction.
    """

    Params: ClassVar[type[DetectorParams]] = ReconstructionParams
    params: ReconstructionParams
    spatial: ClassVar[bool] = True
    needs_encoder: ClassVar[bool] = False
    statistics: ClassVar[tuple[str, ...]] = ("input_shape",)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.register_buffer("input_shape", torch.empty(0, dtype=torch.long))

    @abstractmethod
    def build(self, channels: int, size: int) -> None:
        """Create the (untrained) networks as submodules for images ``[N, channels, size, size]``."""

    @abstractmethod
    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        """Train the networks on normal ``images`` (CPU tensor; move batches to ``self.device``)."""

    @abstractmethod
    def anomaly_map(self, x: Tensor) -> Tensor:
        """Pixel anomaly maps ``[B, H, W]`` of a batch ``x`` already on ``self.device``."""

    @property
    def device(self) -> torch.device:
        return self.input_shape.device

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        # the buffers named in ``statistics`` describe the networks (input shape, and e.g. which
        # variant or backbone was fitted): take them first, then rebuild, then load the weights
        device = self.device
        for name in self.statistics:
            if prefix + name in state_dict:
                setattr(self, name, state_dict[prefix + name].detach().clone().to(device))
        if self.input_shape.numel() == 2:
            self.build(int(self.input_shape[0]), int(self.input_shape[1]))
            self.to(device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> ReconstructionDetector:
        """Build the networks for the images' shape (seeded) and train them on ``images``."""
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"{self.name} needs square images [N, C, S, S], got {tuple(images.shape)}")
        device = self.device
        self.input_shape = torch.tensor([images.shape[1], images.shape[-1]], device=device)
        torch.manual_seed(self.params.seed)
        self.build(images.shape[1], images.shape[-1])
        self.to(device)
        self.train_networks(images, encoder, unlabeled)
        return self.eval()

    @torch.no_grad()
    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """Pixel maps ``[N, H, W]`` and their mean (or max) per image."""
        if self.input_shape.numel() == 0:
            raise RuntimeError(f"detector {self.name!r} is not fitted: call fit() or load_state_dict() first")
        expected = tuple(self.input_shape.tolist())
        if (images.shape[1], images.shape[-1]) != expected:
            raise ValueError(f"{self.name} was fitted on [C, S] = {list(expected)} images, got {tuple(images.shape)}")
        self.eval()
        maps = torch.cat([self.anomaly_map(b.to(self.device)).float().cpu()
                          for b in batches(images, self.params.batch_size)])
        return DetectorOutput(scores=reduce_maps(maps, self.params.reduction), maps=maps)
