"""The convolutional autoencoder of DDAD / MedIAnomaly and its MemAE and AE-U variants.

Encoder: 4 convolutions (kernel 4, stride 2, channels 16-32-64-64); bottleneck: 3 fully connected
layers (flat → ``hidden`` → ``latent`` → flat); decoder: 4 transposed convolutions (64-32-16-C);
BatchNorm + ReLU after every layer except the output (DDAD paper, implementation details).
``linear_latent=True`` leaves the latent layer linear (no BatchNorm, no ReLU), as the DDAD
authors' code does: the code is then not rectified (issue 14 item 14; docs/detectors/ddad.md).
Variants of the same network:

- ``memory > 0`` (MemAE, Gong et al. 2019): the latent code z is replaced by ẑ = ŵ M, a
  combination of ``memory`` learned items M with attention w = softmax(cos(z, m_i)) sharpened by
  hard shrinkage ŵ_i = ReLU(w_i − λ) w_i / (|w_i − λ| + ε) and renormalised (their eqs. 4-7);
- ``uncertainty=True`` (AE-U, Mao et al. 2020): the decoder also predicts log σ² per pixel.

>>> import torch
>>> out = ConvAutoEncoder(channels=1, size=64).forward(torch.rand(2, 1, 64, 64))
>>> tuple(out.reconstruction.shape), out.log_var is None, out.attention is None
((2, 1, 64, 64), True, True)
>>> out = ConvAutoEncoder(1, 32, memory=10, uncertainty=True)(torch.rand(2, 1, 32, 32))
>>> tuple(out.log_var.shape), tuple(out.attention.shape)
((2, 1, 32, 32), (2, 10))
>>> bool((ConvAutoEncoder(1, 32, linear_latent=True).eval().bottleneck_in(torch.randn(4, 256)) < 0).any())
True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHANNELS = (16, 32, 64, 64)


class AEOutput(NamedTuple):
    reconstruction: Tensor
    log_var: Tensor | None = None
    attention: Tensor | None = None


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _deconv(cin: int, cout: int) -> nn.Sequential:
    deconv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return nn.Sequential(deconv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _linear(fin: int, fout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(fin, fout, bias=False), nn.BatchNorm1d(fout), nn.ReLU(inplace=True))


class MemoryModule(nn.Module):
    """MemAE's memory: ẑ = ŵ M with cosine attention and hard shrinkage (threshold λ = ``shrink``)."""

    def __init__(self, items: int, dim: int, shrink: float | None = None, eps: float = 1e-12):
        super().__init__()
        self.memory = nn.Parameter(torch.randn(items, dim) / dim**0.5)
        self.shrink = 1.0 / items if shrink is None else shrink
        self.eps = eps

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.softmax(F.normalize(z, dim=1) @ F.normalize(self.memory, dim=1).T, dim=1)
        if self.shrink > 0:
            w = F.relu(w - self.shrink) * w / ((w - self.shrink).abs() + self.eps)
            w = w / w.sum(1, keepdim=True).clamp_min(self.eps)
        return w @ self.memory, w


class ConvAutoEncoder(nn.Module):
    """AE / MemAE / AE-U for ``channels`` x ``size`` x ``size`` images (``size`` a multiple of 16)."""

    def __init__(
        self,
        channels: int = 1,
        size: int = 64,
        latent: int = 16,
        hidden: int = 1024,
        memory: int = 0,
        shrink: float | None = None,
        uncertainty: bool = False,
        linear_latent: bool = False,
    ):
        super().__init__()
        if size % 16 or size < 16:
            raise ValueError(f"the autoencoder needs an image size that is a multiple of 16, got {size}")
        self.grid = size // 16
        flat = CHANNELS[-1] * self.grid**2
        self.encoder = nn.Sequential(*(_conv(a, b) for a, b in zip((channels, *CHANNELS[:-1]), CHANNELS)))
        first = _linear(flat, hidden)  # built before the code layer: the seed's weights stay those of older runs
        code = nn.Linear(hidden, latent) if linear_latent else _linear(hidden, latent)
        self.bottleneck_in = nn.Sequential(first, code)
        self.memory = MemoryModule(memory, latent, shrink) if memory > 0 else None
        self.bottleneck_out = _linear(latent, flat)
        out_channels = channels * (2 if uncertainty else 1)
        self.decoder = nn.Sequential(
            _deconv(64, 64), _deconv(64, 32), _deconv(32, 16), nn.ConvTranspose2d(16, out_channels, 4, 2, 1)
        )
        self.channels, self.uncertainty = channels, uncertainty

    def forward(self, x: Tensor) -> AEOutput:
        z = self.bottleneck_in(self.encoder(x).flatten(1))
        attention = None
        if self.memory is not None:
            z, attention = self.memory(z)
        out = self.decoder(self.bottleneck_out(z).unflatten(1, (CHANNELS[-1], self.grid, self.grid)))
        if self.uncertainty:
            return AEOutput(out[:, : self.channels], out[:, self.channels :], attention)
        return AEOutput(out, None, attention)
