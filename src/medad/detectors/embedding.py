"""Scores on the pooled encoder embedding, with per-view statistics for test-time augmentation.

CON2 compares a test view ``g(t(x))`` with the training set seen through the *same* transform
``t`` (``g(t(x'))`` in eqs. 12 and 15) and averages the per-view scores (eq. 16). An
:class:`EmbeddingDetector` therefore embeds the training set under every view ``t_0 .. t_A``
(``t_0`` = identity, ``A = params.tta``, see :mod:`medad.augment.tta`), fits one set of statistics
per view (buffers with a leading view dimension), scores each test view against the statistics
of that view and returns the mean over views. With ``tta = 0`` this is the plain score.

``params.contexts`` (e.g. ``["invert"]``, see :mod:`medad.augment.context`) adds CON2's context
clusters: every TTA view is then also taken of ``t_c(x)`` for each listed context, i.e. the views
are ``t_k(t_c(x))`` for ``t_c`` in (identity, *contexts) and ``k = 0 .. A``, each with its own
statistics fitted on ``t_k(t_c(x'))`` of the training images, and the score is the mean over all
``(1 + len(contexts)) (A + 1)`` views. Eq. 16 spreads its A views over the two contexts; here every
context gets the same A + 1 views.

``params.layer`` (e.g. ``"layer1"``) embeds an image as the spatial mean of that ResNet stage's
feature map instead of the encoder's pooled output (which is ``layer4``'s mean): what a
pre-training learned can sit in its early stages only (docs/detectors/embedding-scores.md).

Each view's embeddings are computed once per (encoder, images, layer, context, view, tta_seed) and
kept in the caller's ``cache``, so e.g. Mahalanobis, S_NND and S_LH share one forward pass per view
(and the identity view is shared whatever the TTA and context settings).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from medad.augment.context import context_transform
from medad.augment.tta import tta_view
from medad.detectors.base import Detector, DetectorOutput, DetectorParams, NonFiniteFeatures
from medad.device_policy import autocast_for
from medad.models.resnet import LAYERS
from medad.runtime import batches, module_device


class EmbeddingParams(DetectorParams):
    """Parameters shared by all embedding detectors."""

    batch_size: int = Field(128, ge=1, description="images per encoder forward pass")
    tta: int = Field(0, ge=0, description="test-time augmentation views beyond the identity (CON2 eq. 16)")
    tta_seed: int = Field(0, description="seed of the test-time augmentation parameters")
    contexts: list[str] = Field(
        default_factory=list, description="CON2 context augmentations scored beside the identity (eq. 16)"
    )
    layer: Literal[LAYERS] | None = Field(  # type: ignore[valid-type]
        None, description="ResNet stage whose spatially averaged map is the embedding (None: the encoder's "
        "pooled output, the mean of layer4)"
    )

    @field_validator("contexts")
    @classmethod
    def _known_contexts(cls, names: list[str]) -> list[str]:
        for name in names:
            context_transform(name)
        if len(set(names)) < len(names):
            raise ValueError(f"contexts must not repeat, got {names}")
        return names

    @property
    def n_views(self) -> int:
        """Views fitted and scored: (identity + contexts) x (identity + TTA views)."""
        return (1 + len(self.contexts)) * (self.tta + 1)


def stage_mean(encoder: nn.Module, x: Tensor, layer: str) -> Tensor:
    """Spatial mean ``[N, C]`` of ResNet stage ``layer``'s feature map of ``x``.

    >>> from medad.models.resnet import ResNetEncoder
    >>> tuple(stage_mean(ResNetEncoder(in_channels=1, width=8), torch.rand(2, 1, 32, 32), "layer2").shape)
    (2, 16)
    """
    if not callable(getattr(encoder, "feature_maps", None)):
        raise ValueError(f"detector.params.layer={layer!r} needs a ResNet encoder with feature maps, "
                         f"got {type(encoder).__name__}")
    return encoder.feature_maps(x, (layer,))[layer].mean(dim=(2, 3))


@torch.no_grad()
def embed_view(
    images: Tensor, encoder: nn.Module, k: int, seed: int, batch_size: int, context: str | None = None,
    layer: str | None = None,
) -> Tensor:
    """Embeddings ``[N, D]`` (float32, CPU) of TTA view ``k`` of ``images [N, C, H, W]``, or of
    ``t_c(images)`` for a ``context`` (:data:`medad.augment.context.CONTEXTS`); with a ``layer``,
    the :func:`stage_mean` of that stage instead of the encoder's output.

    The encoder runs in eval mode on its own device; its previous train/eval mode is restored.

    >>> tuple(embed_view(torch.rand(5, 1, 4, 4), nn.Flatten(), k=1, seed=0, batch_size=2).shape)
    (5, 16)
    """
    if len(images) == 0:
        raise ValueError("no images to embed")
    device, was_training = module_device(encoder), encoder.training
    transform = context_transform(context) if context else None
    forward = encoder if layer is None else (lambda x: stage_mean(encoder, x, layer))
    encoder.eval()
    try:
        parts = []
        for batch in batches(images, batch_size):
            batch = batch.to(device)
            with autocast_for(device):
                out = forward(tta_view(transform(batch) if transform else batch, k, seed))
            if out.ndim != 2:
                raise ValueError(f"the encoder must return pooled embeddings [N, D], got shape {tuple(out.shape)}")
            parts.append(out.float().cpu())
    finally:
        encoder.train(was_training)
    z = torch.cat(parts)
    bad = int((~torch.isfinite(z)).any(-1).sum())
    if bad:
        raise NonFiniteFeatures(f"the encoder produced NaN/Inf embeddings for {bad} of {len(z)} images")
    return z


def cached_view(
    images: Tensor, encoder: nn.Module, cache: dict, k: int = 0, seed: int = 0, batch_size: int = 128,
    context: str | None = None, layer: str | None = None,
) -> Tensor:
    """:func:`embed_view` computed once per (encoder, images, layer, context, view) and kept in ``cache``:
    the detectors of one scoring pass and the model's :meth:`~medad.model.AnomalyDetector.embed`
    share it. View 0 (identity) does not depend on the seed, so detectors without TTA share it.

    >>> cache, x = {}, torch.rand(3, 1, 4, 4)
    >>> cached_view(x, nn.Flatten(), cache) is cached_view(x, nn.Flatten(), cache)
    False
    >>> flat = nn.Flatten()
    >>> cached_view(x, flat, cache) is cached_view(x, flat, cache)
    True
    """
    key = ("embedding", id(encoder), id(images), layer, context, k, seed if k else None)
    if key not in cache:
        # keeping encoder and images alive guarantees their ids are not reused by other objects
        cache[key] = (encoder, images, embed_view(images, encoder, k, seed, batch_size, context, layer))
    return cache[key][-1]


class EmbeddingDetector(Detector):
    """Base class of detectors on pooled embeddings; subclasses list their fitted buffers in
    ``statistics`` and implement :meth:`_fit` and :meth:`_score` on ``[views, N, D]`` embeddings.
    """

    Params: ClassVar[type[DetectorParams]] = EmbeddingParams
    params: EmbeddingParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        for name in self.statistics:
            self.register_buffer(name, torch.empty(0))

    @abstractmethod
    def _fit(self, z: Tensor) -> dict[str, Tensor]:
        """Statistics ``{name: [views, ...]}`` of training embeddings ``z [views, N, D]``."""

    @abstractmethod
    def _score(self, z: Tensor) -> Tensor:
        """Per-view scores ``[views, N]`` of embeddings ``z [views, N, D]`` (view ``v`` against
        the statistics of view ``v``)."""

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> EmbeddingDetector:
        """Fit one set of statistics per (context, TTA) view of the normal training ``images``."""
        for name, value in self._fit(self._embed(images, encoder, cache)).items():
            setattr(self, name, value.to(getattr(self, name).device))
        return self

    def score(self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None) -> DetectorOutput:
        """Mean over (context, TTA) views of the per-view scores (CON2 eq. 16), float64 on CPU."""
        fitted = getattr(self, self.statistics[0])
        if fitted.numel() == 0:
            raise RuntimeError(f"detector {self.name!r} is not fitted: call fit() or load_state_dict() first")
        p = self.params
        if fitted.shape[0] != p.n_views:
            raise ValueError(
                f"detector {self.name!r} was fitted with {fitted.shape[0]} views but params.tta="
                f"{p.tta} and contexts={p.contexts} ask for {p.n_views}"
            )
        z = self._embed(images, encoder, cache).to(fitted.device)
        return DetectorOutput(scores=self._score(z).mean(0).to("cpu", torch.float64))

    def _embed(self, images: Tensor, encoder: nn.Module | None, cache: dict | None) -> Tensor:
        """Embeddings ``[views, N, D]``, context-major (identity first); each view is taken from /
        stored in ``cache``."""
        if encoder is None:
            raise ValueError(f"detector {self.name!r} needs the encoder")
        cache = {} if cache is None else cache
        p = self.params
        views = [cached_view(images, encoder, cache, k, p.tta_seed, p.batch_size, context, p.layer)
                 for context in [None, *p.contexts] for k in range(p.tta + 1)]
        return torch.stack(views)

