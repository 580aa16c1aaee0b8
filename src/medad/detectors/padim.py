"""PaDiM: one Gaussian per feature-map position (Defard et al. 2021, as used in PMSACL eq. 13).

Fit: the encoder's ``layer1..layer3`` maps of each normal image are brought to the layer-1 grid
by **nearest-neighbour** upsampling (each deeper cell is repeated over the layer-1 cells it covers,
as in the PaDiM reference code and anomalib), concatenated, and a fixed random subset of ``d``
channels is kept (:func:`patch_embeddings`). At every grid position ω a Gaussian
``N(μ_ω, Σ_ω)`` is fitted to the ``N`` training vectors ``x_ω`` (:class:`PositionMoments`).

Score: the anomaly map is the Mahalanobis distance of PMSACL eq. 13,
``s(x_ω) = sqrt((x_ω − μ_ω)ᵀ Σ_ω⁻¹ (x_ω − μ_ω))``, at the feature grid; it is upsampled
bilinearly to the image size and Gaussian-smoothed (:func:`smooth_maps`), and the image score is
its maximum (PMSACL, below eq. 13) or, with ``reduction="mean"``, its mean.

>>> from medad.models.resnet import ResNetEncoder
>>> _ = torch.manual_seed(0)
>>> encoder, normals = ResNetEncoder(1, width=4, stem="cifar"), torch.rand(6, 1, 8, 8)
>>> detector = PadimDetector(d=10).fit(normals, encoder)
>>> out = detector.score(normals[:2], encoder)
>>> tuple(out.scores.shape), tuple(out.maps.shape), tuple(detector.precision.shape)
((2,), (2, 8, 8), (8, 8, 10, 10))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import Detector, DetectorOutput, DetectorParams, NonFiniteFeatures
from medad.detectors.maps import reduce_maps, smooth_maps
from medad.device_policy import autocast_for
from medad.linalg import spd_inverse
from medad.runtime import batches, module_device

log = logging.getLogger(__name__)

T = TypeVar("T")
# positions whose float64 covariances are built and inverted at once: 64 x 448 x 448 x 8 B = 100 MB
_INVERSE_CHUNK = 64


class PadimParams(DetectorParams):
    """Parameters of :class:`PadimDetector` (``detector.params``)."""

    layers: tuple[str, ...] = Field(
        ("layer1", "layer2", "layer3"), min_length=1, description="encoder layers whose maps are concatenated"
    )
    d: int = Field(100, ge=1, description="random channels kept (capped at the channels available)")
    seed: int = Field(0, description="seed of the random channel subset (in a run: train.seed unless set)")
    covariance: Literal["ledoit_wolf", "identity"] = Field(
        "ledoit_wolf",
        description="ledoit_wolf: per-position Ledoit-Wolf shrinkage; identity: sample covariance + epsilon*I (paper)",
    )
    epsilon: float = Field(0.01, gt=0, description="the ridge added by covariance='identity'")
    sigma: float = Field(
        4.0, ge=0, description="Gaussian smoothing sigma in px at 256 px, scaled with the side; 0: none"
    )
    reduction: Literal["max", "mean"] = Field("max", description="image score from the map")
    batch_size: int = Field(32, ge=1, description="images per encoder forward pass")


def select_channels(total: int, d: int, seed: int) -> Tensor:
    """Sorted indices of ``min(d, total)`` channels out of ``total``, drawn with ``seed``.

    >>> select_channels(10, 4, seed=0).tolist() == select_channels(10, 4, seed=0).tolist()
    True
    >>> select_channels(3, 100, seed=0).tolist()
    [0, 1, 2]
    """
    if d >= total:
        if d > total:
            log.info("PaDiM: d=%d but the layers have %d channels; using all of them", d, total)
        return torch.arange(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[:d].sort().values


def patch_embeddings(images: Tensor, encoder: nn.Module, layers: Sequence[str], index: Tensor) -> Tensor:
    """Channels ``index`` of the concatenated ``layers`` maps of ``images``, at the largest grid.

    Each layer's selected channels are upsampled (nearest) to the grid of the largest map before
    concatenation, so the result ``[N, len(index), h, w]`` equals selecting from the full
    concatenation. ``index`` counts channels over ``layers`` in the order given.

    >>> from medad.models.resnet import ResNetEncoder
    >>> enc = ResNetEncoder(1, width=4, stem="cifar")  # layer1..3: 4, 8, 16 channels
    >>> tuple(patch_embeddings(torch.rand(2, 1, 8, 8), enc, ("layer1", "layer3"), torch.tensor([0, 5, 19])).shape)
    (2, 3, 8, 8)
    """
    maps = encoder.feature_maps(images, layers)
    grid = max((m.shape[-2:] for m in maps.values()), key=lambda s: s[0] * s[1])
    parts, start = [], 0
    for name in layers:
        fmap = maps[name]
        local = index[(index >= start) & (index < start + fmap.shape[1])] - start
        start += fmap.shape[1]
        if len(local):
            parts.append(F.interpolate(fmap[:, local.to(fmap.device)], size=grid, mode="nearest"))
    if start <= int(index.max()):
        raise ValueError(
            f"channel index {int(index.max())} is out of range for layers {list(layers)} ({start} channels)"
        )
    return torch.cat(parts, dim=1)


class PositionMoments:
    """Per-position sums of feature vectors, accumulated batch by batch in float64.

    ``update(x)`` takes ``x [P, B, d]`` (``P`` positions, ``B`` images). It keeps
    ``Σ y``, ``Σ y yᵀ``, ``Σ ‖y‖² y`` and ``Σ ‖y‖⁴`` per position, with ``y = x − r`` shifted by
    the first batch's mean ``r`` to avoid cancellation; memory is ``P·d²`` doubles, whatever the
    number of images. :meth:`covariance` turns them into the covariance of a chunk of positions.

    >>> x = torch.randn(3, 50, 4, dtype=torch.float64)
    >>> m = PositionMoments()
    >>> for part in x.split(7, dim=1):
    ...     m.update(part)
    >>> bool(torch.allclose(m.mean(), x.mean(1)))
    True
    """

    def __init__(self) -> None:
        self.n = 0
        self.ref = self.s1 = self.s2 = self.s3 = self.s4 = torch.empty(0)

    def update(self, x: Tensor) -> None:
        """Add the vectors ``x [P, B, d]`` (cast to float64)."""
        x = x.to(torch.float64)
        if self.n == 0:
            P, _, d = x.shape
            self.ref = x.mean(1)
            self.s1 = x.new_zeros(P, d)
            self.s2 = x.new_zeros(P, d, d)
            self.s3 = x.new_zeros(P, d)
            self.s4 = x.new_zeros(P)
        y = x - self.ref.unsqueeze(1)
        sq = (y * y).sum(-1)  # ||y||^2, [P, B]
        self.n += x.shape[1]
        self.s1 += y.sum(1)
        self.s2.baddbmm_(y.transpose(1, 2), y)
        self.s3 += (sq.unsqueeze(-1) * y).sum(1)
        self.s4 += (sq * sq).sum(1)

    def mean(self) -> Tensor:
        """``μ_ω`` ``[P, d]``."""
        return self.ref + self.s1 / self.n

    def covariance(self, kind: str, epsilon: float = 0.01, positions: slice = slice(None)) -> Tensor:
        """Regularised covariances ``[p, d, d]`` (float64) of ``positions``.

        ``"identity"``: sample covariance (divisor ``N − 1``) ``+ epsilon·I``, as in PaDiM.
        ``"ledoit_wolf"``: ``(1 − a) S + a (tr S / d) I`` with ``S`` the maximum-likelihood
        covariance and ``a`` the Ledoit–Wolf shrinkage, the estimator of
        :func:`medad.linalg.shrunk_covariance`, computed from the moments: with ``m`` the mean of
        ``y`` and ``c = ‖m‖²``, ``Σᵢ‖yᵢ − m‖⁴ = Σ‖y‖⁴ − 4 mᵀΣ‖y‖²y + 4 mᵀ(Σyyᵀ)m
        + 2c·tr Σyyᵀ − 3Nc²``.
        """
        n = self.n
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 training images, got {n}")
        if kind not in ("ledoit_wolf", "identity"):
            raise ValueError(f"unknown covariance {kind!r}; choose 'ledoit_wolf' or 'identity'")
        m = self.s1[positions] / n
        s2 = self.s2[positions]
        cov = torch.baddbmm(s2, m.unsqueeze(-1), m.unsqueeze(-2), beta=1 / n, alpha=-1.0)  # S = Σyyᵀ/N − m mᵀ
        diag = cov.diagonal(dim1=-2, dim2=-1)  # a view: the in-place updates below go through it
        if kind == "identity":
            cov.mul_(n / (n - 1))
            diag.add_(epsilon)
            return cov
        d = cov.shape[-1]
        mu = diag.sum(-1) / d
        sum_sq = torch.linalg.vector_norm(cov.flatten(1), dim=1) ** 2
        c = (m * m).sum(-1)
        fourth = (
            self.s4[positions]
            - 4 * (m * self.s3[positions]).sum(-1)
            + 4 * (m.unsqueeze(-2) @ s2 @ m.unsqueeze(-1)).flatten()
            + 2 * c * s2.diagonal(dim1=-2, dim2=-1).sum(-1)
            - 3 * n * c * c
        )
        delta = (sum_sq - d * mu * mu) / d
        beta = torch.minimum((fourth / n - sum_sq) / (d * n), delta)
        a = torch.where(beta > 0, beta / delta, 0.0)  # beta > 0 implies delta >= beta > 0
        cov.mul_((1 - a)[:, None, None])
        diag.add_((a * mu)[:, None])
        return cov


class PadimDetector(Detector):
    """PaDiM on any medad encoder (one exposing ``feature_maps`` and ``layer_channels``).

    Buffers: ``index`` (the channel subset, so a loaded detector uses the same channels), ``mean``
    ``[h, w, d]`` and ``precision`` ``[h, w, d, d]`` (``Σ_ω⁻¹``, inverted in float64 by
    :func:`medad.linalg.spd_inverse` and stored as float32). Maps are float32 ``[N, H, W]`` at the
    input size; scores are float64. The shared ``cache`` is not used: no other detector reads
    the feature maps.

    The default ``covariance="ledoit_wolf"`` differs from the paper's ``Σ + 0.01·I``
    (``covariance="identity"``): a fixed ridge depends on the feature scale (negligible for
    features of large variance, dominant for small ones), and with fewer training images than
    ``d`` — common for screening sets — the sample covariance is singular, so unseen directions
    get a distance scaled by ``1/0.01``. Ledoit–Wolf chooses the amount of shrinkage from the
    data, is invariant to the feature scale, and is what medad's image-level Mahalanobis uses.
    """

    name: ClassVar[str] = "padim"
    Params: ClassVar[type[DetectorParams]] = PadimParams
    spatial: ClassVar[bool] = True
    statistics: ClassVar[tuple[str, ...]] = ("index", "mean", "precision")
    params: PadimParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.register_buffer("index", torch.empty(0, dtype=torch.long))
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("precision", torch.empty(0))

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> PadimDetector:
        """Fit ``μ_ω`` and ``Σ_ω⁻¹`` on normal ``images``, streaming the per-position moments."""
        encoder = self._check_inputs(images, encoder)
        p = self.params
        total = sum(encoder.layer_channels[name] for name in p.layers)
        self.index = select_channels(total, p.d, p.seed).to(self.index.device)
        moments = PositionMoments()

        def accumulate(features: Tensor) -> torch.Size:
            moments.update(features.flatten(2).permute(2, 0, 1))  # [P, B, d]
            return features.shape[-2:]

        h, w = self._each_batch(images, encoder, accumulate)[0]
        P, d = moments.s1.shape
        precision = torch.empty(P, d, d, dtype=torch.float32, device=moments.s1.device)
        for start in range(0, P, _INVERSE_CHUNK):
            chunk = slice(start, start + _INVERSE_CHUNK)
            precision[chunk] = spd_inverse(moments.covariance(p.covariance, p.epsilon, chunk)).float()
        device = self.mean.device
        self.mean = moments.mean().float().reshape(h, w, d).to(device)
        self.precision = precision.reshape(h, w, d, d).to(device)
        return self

    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """Smoothed distance maps ``[N, H, W]`` and their max (or mean) per image."""
        if self.mean.numel() == 0:
            raise RuntimeError(f"detector {self.name!r} is not fitted: call fit() or load_state_dict() first")
        encoder = self._check_inputs(images, encoder)
        size, sigma = (images.shape[-2], images.shape[-1]), self.params.sigma
        maps = torch.cat(self._each_batch(images, encoder, lambda f: smooth_maps(self.distance_map(f), size, sigma)))
        return DetectorOutput(scores=reduce_maps(maps, self.params.reduction), maps=maps)

    def distance_map(self, features: Tensor) -> Tensor:
        """PMSACL eq. 13 at each position of ``features [B, d, h, w]``: ``[B, h, w]`` float32 on CPU."""
        h, w, d = self.mean.shape
        if tuple(features.shape[1:]) != (d, h, w):
            raise ValueError(
                f"features of shape {tuple(features.shape[1:])} do not match the fitted (d, h, w) = {(d, h, w)}: "
                "score images of the size the detector was fitted on"
            )
        x = features.to(self.mean.device, torch.float32).flatten(2).permute(2, 0, 1)  # [P, B, d]
        diff = x - self.mean.reshape(h * w, 1, d)
        q = (torch.bmm(diff, self.precision.reshape(h * w, d, d)) * diff).sum(-1)  # [P, B]
        return q.clamp_min(0).sqrt().T.reshape(-1, h, w).cpu()

    def _check_inputs(self, images: Tensor, encoder: nn.Module | None) -> nn.Module:
        if encoder is None or not hasattr(encoder, "feature_maps") or not hasattr(encoder, "layer_channels"):
            raise ValueError(f"detector {self.name!r} needs an encoder with feature_maps() and layer_channels")
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty batch of images [N, C, H, W], got shape {tuple(images.shape)}")
        return encoder

    @torch.no_grad()
    def _each_batch(self, images: Tensor, encoder: nn.Module, fn: Callable[[Tensor], T]) -> list[T]:
        """``fn`` of the patch embeddings of each batch; the encoder runs in eval mode on its device."""
        device, was_training = module_device(encoder), encoder.training
        encoder.eval()
        try:
            out = []
            for batch in batches(images, self.params.batch_size):
                with autocast_for(device):
                    features = patch_embeddings(batch.to(device), encoder, self.params.layers, self.index).float()
                if not torch.isfinite(features).all():
                    raise NonFiniteFeatures("the encoder produced NaN/Inf feature maps")
                out.append(fn(features))
            return out
        finally:
            encoder.train(was_training)

