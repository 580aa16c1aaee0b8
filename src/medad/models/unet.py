"""A small U-Net (Ronneberger et al. 2015) for image-to-image denoising: the DAE detector's network.

``widths`` gives the channels of each resolution level; the image is halved (average pooling)
between levels and brought back with bilinear upsampling, a 1x1 convolution and the skip
connection of the same level. Every block is two 3x3 convolutions with BatchNorm and ReLU; the
output is a linear 1x1 convolution to ``out_channels``. Kascenas et al. (MIDL 2022) use a deeper
and wider U-Net of the same shape at 128 px on a GPU; medad's default (16-32-64-128) trains at
about 35 images/s at 128 px and 140 images/s at 64 px on two CPU cores.

>>> import torch
>>> net = UNet(3, widths=(4, 8, 16))
>>> tuple(net(torch.rand(2, 3, 32, 32)).shape)
(2, 3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``len(widths)`` levels; input sides must be divisible by ``2 ** (len(widths) - 1)``."""

    def __init__(self, in_channels: int, out_channels: int | None = None, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got widths {list(widths)}")
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(_block(channels, width))
            channels = width
        self.reduce = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.reduce.append(nn.Conv2d(channels, width, 1))
            self.up.append(_block(2 * width, width))
            channels = width
        self.out = nn.Conv2d(channels, out_channels or in_channels, 1)
        self.factor = 2 ** (len(widths) - 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"U-Net input sides must be multiples of {self.factor}, got {tuple(x.shape[-2:])}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for reduce, block in zip(self.reduce, self.up):
            x = reduce(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.out(x)
