"""PatchCore: a coreset memory bank of locally aware patch features, nearest-neighbour distance
(Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Not one of medad's seed papers; implemented from the CVPR paper's section 3 (numbers below are
its equations) and checked against anomalib's documented behaviour (layers ``layer2, layer3``,
10 % coreset, 9 neighbours for the re-weighting).

- **Locally aware patch features** (eqs. 1–2): each ``layers`` map of the frozen encoder is
  averaged over a ``patch_size`` × ``patch_size`` neighbourhood at every position (stride 1), the
  deeper maps are upsampled bilinearly to the grid of the first, and the maps are concatenated:
  one feature vector ``m`` per grid position (:func:`patch_features`).
- **Memory bank** (eq. 3): the patch features of all training normals, reduced by **greedy
  coreset selection** (eq. 4, the paper's algorithm 1): starting from one seeded random patch,
  repeatedly add the patch farthest from those chosen, distances measured after a seeded Gaussian
  random projection to ``projection_dim`` dims (Johnson–Lindenstrauss), until ``coreset_ratio`` of
  the bank is kept (:func:`greedy_coreset`). This keeps the largest distance from any training
  patch to the kept ones within twice its smallest possible value (greedy k-centre).
- **Scores** (eqs. 5–7): a test patch's anomaly is its Euclidean distance to the nearest bank
  patch; the map is that distance at every grid position, upsampled bilinearly to the image and
  blurred with ``sigma`` (px at 256 px, σ = 4 as in the paper). The image score is the largest
  patch distance ``s* = ‖m_test* − m*‖`` (``m*`` the nearest bank patch of the most anomalous test
  patch ``m_test*``), re-weighted by eq. 7,
  ``s = (1 − exp‖m_test* − m*‖ / Σ_{m ∈ N_b(m*)} exp‖m_test* − m‖) · s*``,
  with ``N_b(m*)`` the ``b = num_neighbors`` bank patches nearest to ``m*`` (``m*`` itself
  included): a patch whose nearest normal patch sits in a sparse region of the bank scores
  higher. ``num_neighbors = 0`` keeps ``s*``. When a run post-processes maps (``maps.foreground``,
  ``maps.smooth``), the image score is the ``reduction`` of the processed map instead, as for
  every spatial detector, so that patches outside the foreground do not count.

>>> from medad.models.resnet import ResNetEncoder
>>> _ = torch.manual_seed(0)
>>> encoder, normals = ResNetEncoder(1, width=4), torch.rand(6, 1, 32, 32)
>>> detector = PatchcoreDetector(coreset_ratio=0.5, num_neighbors=3).fit(normals, encoder)
>>> out = detector.score(normals[:2], encoder)
>>> tuple(out.scores.shape), tuple(out.maps.shape), tuple(detector.bank.shape)  # 6 x 4 x 4 patches, half kept
((2,), (2, 32, 32), (48, 24))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import Detector, DetectorOutput, DetectorParams, NonFiniteFeatures
from medad.detectors.maps import smooth_maps
from medad.device_policy import autocast_for
from medad.runtime import batches, module_device

# pairwise distances held in memory at once by the searches: queries x bank
_CHUNK_ELEMENTS = 1 << 24


class PatchcoreParams(DetectorParams):
    """Parameters of :class:`PatchcoreDetector` (``detector.params``)."""

    layers: tuple[str, ...] = Field(
        ("layer2", "layer3"), min_length=1, description="encoder layers whose neighbourhood-averaged maps are joined"
    )
    patch_size: int = Field(3, ge=1, description="side of the neighbourhood averaged at each position (eq. 1)")
    coreset_ratio: float = Field(0.1, gt=0, le=1, description="share of the training patches kept in the bank")
    projection_dim: int = Field(128, ge=1, description="random-projection dims for the coreset distances")
    num_neighbors: int = Field(9, ge=0, description="b of the image-score re-weighting (eq. 7); 0: no re-weighting")
    sigma: float = Field(4.0, ge=0, description="Gaussian blur of the map, px at 256 px; 0: none")
    reduction: Literal["max", "mean"] = Field(
        "max", description="image score of a map post-processed by the run's maps: settings (foreground, blur), "
        "which replaces eq. 7 so that patches outside the foreground do not count"
    )
    seed: int = Field(0, description="seed of the coreset start and projection (in a run: train.seed unless set)")
    batch_size: int = Field(32, ge=1, description="images per encoder forward pass")


def patch_features(images: Tensor, encoder: nn.Module, layers: Sequence[str], patch_size: int) -> Tensor:
    """Locally aware patch features ``[N, D, h, w]`` at the grid of ``layers[0]`` (eqs. 1–2).

    Each map is averaged over ``patch_size`` × ``patch_size`` neighbours (borders: the mean of the
    neighbours inside the map), deeper maps are upsampled bilinearly to the first map's grid, and
    all are concatenated along channels.

    >>> from medad.models.resnet import ResNetEncoder
    >>> enc = ResNetEncoder(1, width=4)  # layer2, layer3: 8 and 16 channels, 4x4 and 2x2 at 32 px
    >>> tuple(patch_features(torch.rand(2, 1, 32, 32), enc, ("layer2", "layer3"), 3).shape)
    (2, 24, 4, 4)
    """
    maps = encoder.feature_maps(images, tuple(layers))
    grid = maps[layers[0]].shape[-2:]
    parts = []
    for name in layers:
        fmap = maps[name]
        if patch_size > 1:
            fmap = F.avg_pool2d(fmap, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False)
            fmap = fmap[..., : maps[name].shape[-2], : maps[name].shape[-1]]  # even sizes pad one extra
        if fmap.shape[-2:] != grid:
            fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        parts.append(fmap)
    return torch.cat(parts, dim=1)


def nearest(query: Tensor, bank: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Euclidean distances ``[n, k]`` (ascending) from each row of ``query`` to its ``k`` nearest rows
    of ``bank``, and their indices; exact, in chunks, on the bank's device.

    >>> bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> nearest(torch.tensor([[3.0, 0.0]]), bank, k=2)
    (tensor([[3., 4.]]), tensor([[0, 1]]))
    """
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k} neighbours need 1 <= k <= {len(bank)} (the bank size)")
    query = query.to(bank.device, bank.dtype)
    dists, index = [], []
    for part in batches(query, max(1, _CHUNK_ELEMENTS // len(bank))):
        d, i = torch.cdist(part, bank).topk(k, dim=-1, largest=False)
        dists.append(d)
        index.append(i)
    return torch.cat(dists), torch.cat(index)


def greedy_coreset(features: Tensor, n: int, projection_dim: int = 128, seed: int = 0) -> Tensor:
    """Indices of ``n`` rows of ``features [M, D]`` chosen by greedy k-centre selection (eq. 4,
    algorithm 1): each step adds the row farthest from the rows chosen so far, distances taken
    after a seeded Gaussian random projection to ``projection_dim`` dims (none if ``D`` is not
    larger); the first row is drawn with ``seed``.

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1], [10.0]])
    >>> sorted(greedy_coreset(x, 3, seed=0).tolist()) in ([0, 2, 4], [1, 2, 4], [0, 3, 4], [1, 3, 4])
    True
    """
    m = len(features)
    if not 1 <= n <= m:
        raise ValueError(f"a coreset of {n} rows needs 1 <= n <= {m} (the rows available)")
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if x.shape[1] > projection_dim:
        projection = torch.randn(x.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        x = x @ projection.to(x.device)
    # squared distances to the newest pick as ||x||^2 - 2 x.c + ||c||^2, one matrix-vector product
    # per step (20x faster on a CPU than cdist against one row); the farthest row is the same
    norms = (x * x).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(torch.randint(m, (1,), generator=generator))
    min_sq = torch.addmv(norms + norms[chosen[0]], x, x[chosen[0]], alpha=-2.0)
    for step in range(1, n):
        chosen[step] = int(min_sq.argmax())
        torch.minimum(min_sq, torch.addmv(norms + norms[chosen[step]], x, x[chosen[step]], alpha=-2.0), out=min_sq)
    return chosen


class PatchcoreDetector(Detector):
    """PatchCore on any medad encoder exposing ``feature_maps`` (see the module docstring).

    Buffers: ``bank [M, D]``, the coreset of training patch features (float32), and ``grid``, the
    feature grid ``(h, w)`` the bank was built at. Maps are float32 ``[N, H, W]`` at the input
    size, scores float64. The shared ``cache`` is not used.
    """

    name: ClassVar[str] = "patchcore"
    Params: ClassVar[type[DetectorParams]] = PatchcoreParams
    spatial: ClassVar[bool] = True
    statistics: ClassVar[tuple[str, ...]] = ("bank", "grid")
    params: PatchcoreParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.register_buffer("bank", torch.empty(0))
        self.register_buffer("grid", torch.empty(0, dtype=torch.long))

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> PatchcoreDetector:
        """Build the coreset memory bank from the patch features of normal ``images``."""
        p = self.params
        features = torch.cat(self._features(images, encoder))  # [N, D, h, w]
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        n = max(1, round(p.coreset_ratio * len(patches)))
        keep = greedy_coreset(patches, n, p.projection_dim, p.seed) if n < len(patches) else torch.arange(n)
        if len(keep) < p.num_neighbors:
            raise ValueError(f"num_neighbors={p.num_neighbors} needs a bank of at least that many patches, "
                             f"got {len(keep)}: raise coreset_ratio or lower num_neighbors")
        self.bank = patches[keep].float().to(self.bank.device)
        self.grid = torch.tensor(features.shape[-2:], device=self.grid.device)
        return self

    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """Smoothed nearest-patch distance maps ``[N, H, W]`` and the re-weighted image scores (eq. 7)."""
        if self.bank.numel() == 0:
            raise RuntimeError(f"detector {self.name!r} is not fitted: call fit() or load_state_dict() first")
        h, w = (int(v) for v in self.grid)
        scores, grids = [], []
        for features in self._features(images, encoder):
            if tuple(features.shape[1:]) != (self.bank.shape[1], h, w):
                raise ValueError(f"patch features of shape {tuple(features.shape[1:])} do not match the fitted "
                                 f"(D, h, w) = {(self.bank.shape[1], h, w)}: score images of the size fitted on")
            patches = features.permute(0, 2, 3, 1).reshape(len(features), h * w, -1)
            dist, index = nearest(patches.reshape(-1, patches.shape[-1]), self.bank)
            dist, index = dist.reshape(len(features), h * w), index.reshape(len(features), h * w)
            grids.append(dist.reshape(-1, h, w).cpu())
            scores.append(self.image_scores(patches.to(self.bank.device), dist, index))
        size = (images.shape[-2], images.shape[-1])
        maps = smooth_maps(torch.cat(grids).float(), size, self.params.sigma)
        return DetectorOutput(scores=torch.cat(scores).to("cpu", torch.float64), maps=maps)

    def image_scores(self, patches: Tensor, dist: Tensor, index: Tensor) -> Tensor:
        """Eq. 7 per image from its patches ``[B, P, D]``, their nearest-bank distances and indices ``[B, P]``."""
        s_star, worst = dist.max(dim=1)  # eqs. 5-6
        b = self.params.num_neighbors
        if b == 0:
            return s_star
        rows = torch.arange(len(patches), device=patches.device)
        m_test = patches[rows, worst]  # [B, D]
        m_star = self.bank[index[rows, worst]]
        _, neighbourhood = nearest(m_star, self.bank, b)  # N_b(m*), m* itself first
        d = torch.linalg.vector_norm(m_test[:, None] - self.bank[neighbourhood], dim=-1)  # [B, b]
        # exp(s*) / sum exp(d), computed as exp(s* - logsumexp(d)) so that large distances do not overflow
        weight = 1 - torch.exp(s_star - torch.logsumexp(d, dim=1))
        return weight * s_star

    @torch.no_grad()
    def _features(self, images: Tensor, encoder: nn.Module | None) -> list[Tensor]:
        """Patch features of each batch; the encoder runs in eval mode on its own device."""
        if encoder is None or not callable(getattr(encoder, "feature_maps", None)):
            raise ValueError(f"detector {self.name!r} needs an encoder with feature_maps()")
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty batch of images [N, C, H, W], got shape {tuple(images.shape)}")
        device, was_training = module_device(encoder), encoder.training
        encoder.eval()
        try:
            out = []
            for batch in batches(images, self.params.batch_size):
                with autocast_for(device):
                    features = patch_features(batch.to(device), encoder, self.params.layers, self.params.patch_size)
                if not torch.isfinite(features).all():
                    raise NonFiniteFeatures("the encoder produced NaN/Inf feature maps")
                out.append(features.float())
            return out
        finally:
            encoder.train(was_training)
