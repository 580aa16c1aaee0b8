"""SSIM and multi-scale SSIM (Wang et al. 2003) for images in [0, 1], as losses and anomaly maps.

SSIM(x, y) = l(x, y) · cs(x, y) with l = (2 μx μy + C1)/(μx² + μy² + C1) and
cs = (2 σxy + C2)/(σx² + σy² + C2) under a Gaussian window (σ 1.5); MS-SSIM = Π_j cs_j^{w_j} · l_M^{w_M}
over M dyadic scales with the standard weights (renormalised when a small image allows fewer
than five scales: a scale is used while its side is at least the window size).

>>> import torch
>>> x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
>>> ms_ssim(x, x).tolist()
[1.0, 1.0]
>>> bool((ms_ssim(x, 1 - x) < 0.5).all())
True
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
C1, C2 = 0.01**2, 0.03**2


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_components(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> tuple[Tensor, Tensor]:
    """Luminance l and contrast-structure cs maps ``[N, C, H, W]`` (same size, reflect padding)."""
    channels = x.shape[1]
    w = _gaussian_window(window, sigma, channels, x)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), w, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0)
    var_y = (blur(y * y) - mu_y**2).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1)
    cs = (2 * cov + C2) / (var_x + var_y + C2)
    return luminance, cs


def _scale_terms(x: Tensor, y: Tensor, window: int, max_scales: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(weight w_j, term map ``[N, C, h_j, w_j]``) per scale: cs_j, and l_M · cs_M at the coarsest."""
    size = min(x.shape[-2:])
    window = min(window, size)
    n = 1
    while n < max_scales and size // 2**n >= window:
        n += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=x.dtype, device=x.device)
    for j, weight in enumerate(weights / weights.sum()):
        luminance, cs = ssim_components(x, y, window)
        yield weight, cs if j < n - 1 else luminance * cs
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)


def ms_ssim(x: Tensor, y: Tensor, window: int = 11, max_scales: int = 5) -> Tensor:
    """MS-SSIM per image ``[N]``: Π_j mean(cs_j)^{w_j} · mean(l_M cs_M)^{w_M} (Wang et al. 2003, eq. 7)."""
    out = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for weight, term in _scale_terms(x, y, window, max_scales):
        out = out * term.flatten(1).mean(1).clamp_min(1e-6) ** weight
    return out


def ms_ssim_map(x: Tensor, y: Tensor, window: int = 11, max_scales: int = 5) -> Tensor:
    """Per-pixel MS-SSIM ``[N, H, W]``: every scale's term map upsampled to the input size and
    combined with the same weights — the local counterpart of :func:`ms_ssim`."""
    out = torch.ones(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
    for weight, term in _scale_terms(x, y, window, max_scales):
        term = F.interpolate(term.mean(1, keepdim=True), size=out.shape[-2:], mode="bilinear", align_corners=False)
        out = out * term.clamp_min(1e-6) ** weight
    return out[:, 0]
