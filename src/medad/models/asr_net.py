"""DDAD's Anomaly Score Refinement Net (ASR-Net, F in DDAD eqs. 8 and 13).

Three cascaded 3x3 convolutions, the first two followed by BatchNorm + ReLU (DDAD §4.2); it maps
the stacked raw anomaly maps ``[B, inputs, H, W]`` (A_intra, or A_intra and A_inter) to lesion
logits ``[B, H, W]`` at the same resolution. The detector applies the sigmoid.

>>> import torch
>>> ASRNet(inputs=2, width=8)(torch.rand(3, 2, 16, 16)).shape
torch.Size([3, 16, 16])
"""

from __future__ import annotations

from torch import Tensor, nn


class ASRNet(nn.Module):
    """F(·): ``inputs`` score maps → one logit map (three conv layers, BN + ReLU between them)."""

    def __init__(self, inputs: int = 2, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(inputs, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
        )
        self.inputs = inputs

    def forward(self, maps: Tensor) -> Tensor:
        return self.layers(maps)[:, 0]
