"""Small models and parameter sets shared by several test modules (not a test module itself)."""

from __future__ import annotations

import torch
from torch import nn

# fastest settings that still exercise every part of these detectors
TINY_DETECTOR_PARAMS = {
    "igd": {"epochs": 1, "batch_size": 4, "decoder_width": 4, "critic_width": 4, "patches_per_image": 2},
    "fanogan": {"epochs": 2, "batch_size": 4, "latent_dim": 8, "width": 4, "critic_iters": 2},
}


class ToyEncoder(nn.Module):
    """A convolution and a 2x2 average pool: any image size in, 8-d out."""

    out_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
