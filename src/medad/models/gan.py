"""Small DCGAN-style networks for f-AnoGAN (and IGD's interpolation critic) and the WGAN-GP terms.

- generator G: :class:`medad.models.decoder.ConvDecoder` (z → image in [0, 1]);
- :class:`Critic`: k stride-2 convolutions (kernel 4, LeakyReLU 0.2, no normalisation, as
  WGAN-GP asks of a critic) with k from :func:`~medad.models.decoder.upsampling_plan`, then a
  linear layer to one score; :meth:`Critic.features` is the flattened last convolutional block,
  the f(·) of f-AnoGAN's feature residual;
- :class:`ConvEncoder`: the same convolutions (BatchNorm after all but the first) and a linear
  layer to the latent space — f-AnoGAN's encoder E when it is not initialised from medad's;
- :class:`LatentEncoder`: a medad ResNetEncoder followed by a linear map of its pooled embedding
  to the latent space — f-AnoGAN's E initialised from the pre-trained encoder.

>>> import torch
>>> critic = Critic(channels=1, size=32, width=8)
>>> critic(torch.rand(3, 1, 32, 32)).shape, critic.features(torch.rand(3, 1, 32, 32)).shape
(torch.Size([3]), torch.Size([3, 512]))
>>> ConvEncoder(1, 32, latent=16, width=8)(torch.rand(3, 1, 32, 32)).shape
torch.Size([3, 16])
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from medad.models.decoder import ConvDecoder, upsampling_plan
from medad.models.resnet import ResNetEncoder

Generator = ConvDecoder


def _down_stack(channels: int, size: int, width: int, norm: bool) -> tuple[nn.Sequential, int]:
    """Stride-2 convolutions from ``size`` down to 4-7 px; returns (stack, flattened feature size)."""
    _, steps = upsampling_plan(size)
    layers: list[nn.Module] = []
    cin, side = channels, size
    for i in range(steps):
        cout = min(width * 2**i, 8 * width)
        layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=not (norm and i > 0)))
        if norm and i > 0:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        cin, side = cout, side // 2
    if steps == 0:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        cin = width
    return nn.Sequential(*layers), cin * side * side


class Critic(nn.Module):
    """WGAN critic D(x) ``[N]`` with penultimate features f(x) ``[N, F]`` (see module docstring)."""

    def __init__(self, channels: int, size: int, width: int = 32):
        super().__init__()
        self.body, self.feature_dim = _down_stack(channels, size, width, norm=False)
        self.head = nn.Linear(self.feature_dim, 1)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))[:, 0]


class ConvEncoder(nn.Module):
    """Image → latent ``[N, latent]`` (DCGAN discriminator body + linear layer)."""

    def __init__(self, channels: int, size: int, latent: int, width: int = 32):
        super().__init__()
        self.body, flat = _down_stack(channels, size, width, norm=True)
        self.head = nn.Linear(flat, latent)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).flatten(1))


class LatentEncoder(nn.Module):
    """``ResNetEncoder`` + linear map of its pooled embedding to ``latent`` dimensions."""

    def __init__(self, backbone: ResNetEncoder, latent: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, latent)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, eps: Tensor | None = None
) -> Tensor:
    """WGAN-GP penalty E[(‖∇_x̂ D(x̂)‖₂ − 1)²] at x̂ = ε x + (1 − ε) x̃, ε ~ U[0, 1] per image
    (Gulrajani et al. 2017, Algorithm 1 / eq. 3, without the weight λ). Differentiable (the
    gradient is taken with ``create_graph=True``) so that the critic can be trained on it.

    >>> w = torch.tensor([[0.6, 0.8]])  # |w| = 1 up to float32 rounding (0.6, 0.8 are not exact)
    >>> round(float(gradient_penalty(lambda x: x.flatten(1) @ w.T, torch.rand(4, 2), torch.rand(4, 2))), 6)
    0.0
    """
    if eps is None:
        eps = torch.rand(len(real), *([1] * (real.ndim - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    out = critic(mixed)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Critic loss E[D(x̃)] − E[D(x)] (WGAN; the penalty is added by the caller)."""
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """Generator loss −E[D(G(z))]."""
    return -fake_scores.mean()
