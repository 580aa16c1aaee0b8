"""``dae``: a denoising autoencoder trained to remove coarse noise (Kascenas et al., MIDL 2022).

A U-Net f (:class:`medad.models.unet.UNet`) learns to restore normal images from a corrupted copy:

    x̃ = x + m ⊙ upsample(ε),  ε ~ N(0, σ_n²) on a ``noise_res`` x ``noise_res`` grid,
    L = ‖f(x̃) − x‖²  (mean over pixels and channels),

with ε upsampled bilinearly to the image size, so the noise is made of blobs of about a lesion's
size (Kascenas et al.: 16 x 16 noise at 128 px, σ_n = 0.2), and m the foreground mask. Having
learned to replace a blob that does not belong by what normal tissue looks like there, f does
the same with a lesion, and the residual r = x − f(x) is the anomaly map. With ``work_size`` the
network works on a downsized copy and the map is upsampled (bilinearly) to the input size: the
U-Net trains 4x faster at half the side, and the maps and pixel metrics stay at the data's size. Kascenas et al. show
that this coarse noise, not the usual pixel-wise noise, is what makes the DAE a lesion detector.

Inputs are standardised per image and channel inside the foreground (``standardize``; MRI has no
absolute intensity scale): x ← (x − μ_fg) / σ_fg on the foreground, 0 outside (the foreground of
:func:`medad.detectors.maps.foreground_mask`, at ``foreground``); the map is 0 outside it too.

The map keeps the residual's sign when the modality says what a lesion looks like
(``polarity``): ``abs`` |r| (no assumption; the default), ``bright`` max(r, 0) for lesions
brighter than normal tissue (hyperintense on FLAIR), ``dark`` max(−r, 0); it is averaged over
``map_channels`` (all by default) and set to 0 outside the foreground. Smoothing, erosion of the
foreground and the image score follow the run's ``maps`` settings (:mod:`medad.detectors.maps`);
the detector's own image score is the map's max (``reduction``).

>>> import torch
>>> det = DAEDetector(epochs=1, batch_size=4, widths=(4, 8), noise_res=4)
>>> out = det.fit(torch.rand(8, 1, 16, 16), None).score(torch.rand(2, 1, 16, 16), None)
>>> tuple(out.scores.shape), tuple(out.maps.shape)
((2,), (2, 16, 16))
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from medad.detectors.maps import Reduction, foreground_mask
from medad.detectors.reconstruction import ReconstructionDetector, ReconstructionParams
from medad.models.unet import UNet
from medad.train.networks import train_network

Polarity = Literal["abs", "bright", "dark", "signed"]


class ResidualMapFields(BaseModel):
    """How images are standardised and how a residual becomes a map (shared with ``intensity``)."""

    standardize: bool = Field(True, description="z-score each image and channel inside its foreground")
    foreground: float = Field(0.1, ge=0, lt=1, description="foreground threshold (fraction of the 99th percentile)")
    polarity: Polarity = Field(
        "abs", description="residual kept in the map: |r|, lesions brighter (r > 0) or darker (r < 0) than "
        "normal, or r itself (signed)"
    )
    map_channels: list[int] | None = Field(None, description="channels averaged into the map (None = all)")

    def foreground_of(self, x: Tensor) -> Tensor:
        """The foreground ``[N, H, W]`` on the channels the map reads."""
        return foreground_mask(x, self.foreground, channels=self.map_channels)

    def check_channels(self, channels: int, name: str) -> None:
        bad = [c for c in self.map_channels or [] if not 0 <= c < channels]
        if bad:
            raise ValueError(f"{name}: map_channels {bad} do not exist in {channels}-channel images")

    def inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The images standardised (when ``standardize``; every pixel, with the foreground's μ and σ)
        and their foreground ``[N, H, W]``, found on ``map_channels`` (all when None)."""
        foreground = self.foreground_of(x)
        return (standardize(x, foreground) if self.standardize else x), foreground


class DAEParams(ReconstructionParams, ResidualMapFields):
    epochs: int = Field(40, ge=1, description="training epochs of the U-Net")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (cosine decay to 0)")
    batch_size: int = Field(16, ge=2, description="mini-batch size for training and scoring")
    reduction: Reduction = Field("max", description="reduction of the pixel map to the image score")
    widths: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2, description="U-Net channels per level")
    noise_res: int = Field(16, ge=1, description="side of the coarse noise grid (cells per image side)")
    noise_std: float = Field(0.2, gt=0, description="σ_n of the coarse noise, in standardised intensity units")
    work_size: int | None = Field(
        None, ge=8, description="side the U-Net works at (images resized to it, maps back to the input size); "
        "None = the input size"
    )


def standardize(x: Tensor, foreground: Tensor) -> Tensor:
    """Per image and channel: (x − μ) / σ with μ and σ taken over the ``foreground [N, H, W]`` pixels
    (applied to every pixel; an empty foreground leaves the image centred on 0 with σ floored).

    >>> x = torch.tensor([[[[0.0, 2.0], [4.0, 9.0]]]])
    >>> [round(v, 4) for v in standardize(x, torch.tensor([[[True, True], [True, False]]])).flatten().tolist()]
    [-1.2247, 0.0, 1.2247, 4.2866]
    """
    m = foreground.unsqueeze(1).to(x.dtype)
    n = m.sum((2, 3), keepdim=True).clamp_min(1)
    mean = (x * m).sum((2, 3), keepdim=True) / n
    std = (((x - mean) ** 2 * m).sum((2, 3), keepdim=True) / n).sqrt().clamp_min(1e-3)
    return (x - mean) / std


def coarse_noise(shape: torch.Size, res: int, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise drawn on a ``res`` x ``res`` grid and upsampled bilinearly to ``shape [N, C, H, W]``."""
    n, c, h, w = shape
    grid = torch.randn(n, c, res, res, generator=generator) * std
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)


def residual_map(x: Tensor, restored: Tensor, polarity: Polarity, channels: list[int] | None) -> Tensor:
    """The map ``[N, H, W]`` from the residual r = x − f(x): |r|, max(r, 0), max(−r, 0) or r
    (``polarity`` abs / bright / dark / signed), averaged over ``channels``.

    >>> x, f = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    >>> [residual_map(x, f, p, None).flatten().tolist() for p in ("abs", "bright", "dark", "signed")]
    [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]
    """
    r = x - restored
    if channels is not None:
        r = r[:, channels]
    if polarity != "signed":
        r = r.abs() if polarity == "abs" else r.clamp_min(0) if polarity == "bright" else (-r).clamp_min(0)
    return r.mean(1)


class DAEDetector(ReconstructionDetector):
    """Denoising U-Net with coarse noise; the map is the residual of the restored image."""

    name: ClassVar[str] = "dae"
    Params: ClassVar[type[DAEParams]] = DAEParams
    params: DAEParams

    def build(self, channels: int, size: int) -> None:
        self.params.check_channels(channels, self.name)
        self.net = UNet(channels, widths=self.params.widths).to(memory_format=torch.channels_last)  # faster on CPU
        side = self.params.work_size or size
        if side % self.net.factor:
            raise ValueError(f"dae: the side the U-Net works at ({side}) must be a multiple of {self.net.factor} for "
                             f"{len(self.params.widths)} U-Net levels; change data.image_size, work_size or widths")

    def to_work_size(self, x: Tensor) -> Tensor:
        """``x`` resized (bilinear, antialiased) to ``work_size``, or as it is."""
        side = self.params.work_size
        if side is None or x.shape[-1] == side:
            return x
        return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        p = self.params
        x, foreground = p.inputs(self.to_work_size(images))
        x = x * foreground.unsqueeze(1)
        data = torch.cat([x, foreground.unsqueeze(1).to(x.dtype)], dim=1)  # the mask travels with its image
        noise = torch.Generator().manual_seed(p.seed + 1)
        channels = x.shape[1]

        def loss(batch: Tensor) -> Tensor:
            clean, mask = batch[:, :channels], batch[:, channels:]
            noisy = clean + coarse_noise(clean.shape, p.noise_res, p.noise_std, noise).to(clean.device) * mask
            return F.mse_loss(self.net(noisy.contiguous(memory_format=torch.channels_last)), clean)

        train_network(self.net, data, loss, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, seed=p.seed,
                      cosine=True, name=self.name)

    def anomaly_map(self, x: Tensor) -> Tensor:
        p = self.params
        z, foreground = p.inputs(self.to_work_size(x))
        z = z * foreground.unsqueeze(1)
        restored = self.net(z.contiguous(memory_format=torch.channels_last))
        amap = residual_map(z, restored, p.polarity, p.map_channels) * foreground
        if amap.shape[-2:] != x.shape[-2:]:
            amap = F.interpolate(amap.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            amap = amap * p.foreground_of(x).to(amap.dtype)
        return amap
