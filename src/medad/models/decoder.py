"""A DCGAN-style decoder (vector → image) and fine-tunable copies of the medad encoder.

``ConvDecoder`` is IGD's decoder g_φ and f-AnoGAN's generator G: a linear layer to an
s₀ × s₀ grid (s₀ = ⌈size / 2ᵏ⌉, 4 to 8 px from 8 px up) followed by k stride-2 transposed convolutions
(kernel 4, BatchNorm + ReLU between them) and a sigmoid, so outputs lie in [0, 1] like medad's
images; s₀·2ᵏ ≥ size and the output is centre-cropped to ``size`` (e.g. 28 px: 7·2², 30 px: 8·2²
cropped), so any square size from 4 px works.

The detectors that fine-tune the medad encoder (IGD, f-AnoGAN with ``encoder_init="medad"``)
keep their own :class:`~medad.models.resnet.ResNetEncoder`, whose shape they record in a small
tensor (``backbone_spec``: in_channels, width, stem, channels_last) so that a saved detector
rebuilds it from its ``state_dict`` alone; the weights are *copied* from the encoder passed to
``fit`` (which is only read).

>>> import torch
>>> ConvDecoder(16, channels=1, size=28)(torch.rand(2, 16)).shape
torch.Size([2, 1, 28, 28])
>>> upsampling_plan(32), upsampling_plan(28), upsampling_plan(30)
((4, 3), (7, 2), (8, 2))
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from medad.models.resnet import CHANNELS_LAST_MIN_WIDTH, ResNetEncoder, resolve_stem

log = logging.getLogger("medad")

STEMS = ("cifar", "imagenet")


def upsampling_plan(size: int) -> tuple[int, int]:
    """(s₀, k): start grid side and number of ×2 steps, with s₀ = ⌈size / 2ᵏ⌉ and k the largest
    number of halvings that keeps ⌊size / 2ᵏ⌋ ≥ 4 (no halving below 8 px)."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    k = 0
    while size // 2 ** (k + 1) >= 4:
        k += 1
    return -(-size // 2**k), k


class ConvDecoder(nn.Module):
    """Vector ``[N, latent]`` → image ``[N, channels, size, size]`` in [0, 1] (see module docstring).

    ``width`` is the channel count of the last hidden layer; it doubles at every coarser step
    (capped at 8 × ``width``).
    """

    def __init__(self, latent: int, channels: int, size: int, width: int = 32):
        super().__init__()
        self.start, steps = upsampling_plan(size)
        self.size = size
        widths = [min(width * 2**i, 8 * width) for i in range(max(steps - 1, 0), -1, -1)]  # coarse → fine
        self.start_channels = widths[0]
        self.project = nn.Sequential(
            nn.Linear(latent, widths[0] * self.start**2, bias=False),
            nn.BatchNorm1d(widths[0] * self.start**2),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if steps > 0:
            layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        else:
            layers.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(len(z), self.start_channels, self.start, self.start)
        out = torch.sigmoid(self.net(h))
        top = (out.shape[-1] - self.size) // 2
        return out[..., top : top + self.size, top : top + self.size]


# -- copies of the medad encoder -------------------------------------------------------------


def backbone_spec(encoder: ResNetEncoder) -> Tensor:
    """``[in_channels, width, stem index, channels_last]`` of a ResNetEncoder (long tensor)."""
    channels_last = encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last) and encoder.width > 1
    return torch.tensor(
        [encoder.in_channels, encoder.width, STEMS.index(encoder.stem), int(channels_last)], dtype=torch.long
    )


def default_spec(channels: int, size: int, width: int) -> Tensor:
    """Spec of a fresh encoder when no usable medad encoder is given (stem as ``auto``)."""
    stem = resolve_stem("auto", size)
    return torch.tensor([channels, width, STEMS.index(stem), 0], dtype=torch.long)


def backbone_from_spec(spec: Tensor) -> ResNetEncoder:
    """A (randomly initialised) ResNetEncoder of the shape ``spec`` describes."""
    in_channels, width, stem, channels_last = (int(v) for v in spec.tolist())
    encoder = ResNetEncoder(in_channels, width, STEMS[stem])  # type: ignore[arg-type]
    if channels_last and width >= CHANNELS_LAST_MIN_WIDTH:
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder


def usable_backbone(encoder: nn.Module | None, channels: int, who: str, warn: bool = True) -> ResNetEncoder | None:
    """``encoder`` if it is a ResNetEncoder for ``channels``-channel images, else None (logged)."""
    if encoder is None:
        return None
    if not isinstance(encoder, ResNetEncoder):
        if warn:
            log.warning("%s: encoder %s is not a medad ResNetEncoder; training a fresh one",
                        who, type(encoder).__name__)
        return None
    if encoder.in_channels != channels:
        if warn:
            log.warning("%s: encoder takes %d channels, images have %d; training a fresh one",
                        who, encoder.in_channels, channels)
        return None
    return encoder


def copy_weights(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s parameters and buffers into ``target`` (``source`` is only read)."""
    with torch.no_grad():
        target.load_state_dict({k: v.detach().clone() for k, v in source.state_dict().items()})
