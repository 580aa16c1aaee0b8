"""``intensity``: the image itself as the anomaly map — the trivial baseline every detector must beat.

Each image is standardised per channel with the mean and standard deviation of its foreground
(as the ``dae`` detector's input, :mod:`medad.detectors.dae`), and the map is the standardised
intensity z with the ``polarity`` of the modality's lesions: |z| (abs), max(z, 0) (bright, e.g.
FLAIR hyperintensities), max(−z, 0) (dark) or z (signed), averaged over ``map_channels``. The map
covers the whole image (a dark background keeps its low z); ``maps.foreground`` masks it. It
learns nothing from the normal images, so it shows what a prior about lesion brightness gives
alone; a learned detector with the same polarity and ``maps`` settings is worth what it adds to
it. Image score: the map's max.

>>> import torch
>>> x = torch.full((1, 1, 8, 8), 0.5)
>>> x[0, 0, 2, 2] = 0.9
>>> out = IntensityDetector(polarity="bright").fit(x, None).score(x, None)
>>> int(out.maps[0].argmax()), tuple(out.scores.shape)
(18, (1,))
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import Detector, DetectorOutput, DetectorParams
from medad.detectors.dae import ResidualMapFields, residual_map
from medad.detectors.maps import Reduction, reduce_maps


class IntensityParams(DetectorParams, ResidualMapFields):
    reduction: Reduction = Field("max", description="reduction of the pixel map to the image score")


class IntensityDetector(Detector):
    """Standardised intensity as the map; nothing is fitted."""

    name: ClassVar[str] = "intensity"
    Params: ClassVar[type[IntensityParams]] = IntensityParams
    params: IntensityParams
    spatial: ClassVar[bool] = True
    needs_encoder: ClassVar[bool] = False

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> IntensityDetector:
        """Nothing to learn; checks that ``map_channels`` exist in the images."""
        self.params.check_channels(images.shape[1], self.name)
        return self

    @torch.no_grad()
    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        self.params.check_channels(images.shape[1], self.name)
        z, _ = self.params.inputs(images)
        maps = residual_map(z, torch.zeros_like(z), self.params.polarity, self.params.map_channels)
        return DetectorOutput(scores=reduce_maps(maps, self.params.reduction), maps=maps.float())
