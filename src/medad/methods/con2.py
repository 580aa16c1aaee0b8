"""CON2: context contrasting with content alignment, method ``con2``.

"Two is better than one: aligned representation pairs for anomaly detection" (anonymous
submission, ``../shared/papers/002_d9d416915d883897.txt``), section 3.2. Every batch image x is
seen in two contexts, x and x^c = t_c(x) (:mod:`medad.augment.context`, eq. 2), and each of the
2N images gets two weak "content" views (eq. 3), 4N views in all, encoded as one batch by g_θ.
Two independent projection heads h_φ (``head``) and h_ψ (``content_head``) feed

    L = L_context + α L_content                                                  (eq. 8)

- L_context (eq. 5): positives are all other views of the same context, negatives those of the
  other context (:func:`positive_pair_loss` with the context label);
- L_content (eqs. 6-7): positives are the other three views of the same image in either context,
  negatives all views of other images (:func:`positive_pair_loss` with the image index);
- α rises linearly from 0 to ``params.alpha`` over training (:meth:`CON2Method.on_train_step`).

The paper trains with AdamW (lr 1e-3, weight decay 1e-3) and a cosine schedule; in medad those
are the ``train`` settings ``optimizer: adamw``, ``lr: 0.001``, ``weight_decay: 0.001``,
``schedule: cosine``. Score with ``detector.params.contexts: [<context>]`` to use both context
clusters (eq. 16). See ``docs/methods/con2.md``.

>>> import torch
>>> from medad.models.resnet import ResNetEncoder
>>> method = CON2Method(ResNetEncoder(1, width=8, stem="cifar"))
>>> sorted(method.training_loss(torch.rand(4, 1, 16, 16)))
['alpha', 'loss', 'loss_content', 'loss_context']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from sklearn.metrics import silhouette_score
from torch import Tensor, nn

from medad import distributed
from medad.augment.context import context_features, context_transform, save_context_grid
from medad.methods.base import MethodParams
from medad.methods.contrastive import ContrastiveMethod, ContrastiveParams
from medad.models.heads import ProjectionHead


def positive_pair_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Mean of ℓ(z_i, z_j, Z) (CON2 eq. 1) over all ordered pairs i ≠ j with ``labels[i] == labels[j]``.

    ℓ(z_i, z_j, Z) = −log [exp(cos(z_i, z_j)/τ) / Σ_{k ≠ i} exp(cos(z_i, z_k)/τ)], the sum running
    over all other rows of ``z [M, D]`` (positives included). With the context labels of the 4N
    views this is L_context, eq. 5 (4N(2N − 1) pairs); with the image indices it is L_content,
    eq. 7 (12N pairs). When every anchor has the same number of positives it equals the SupCon
    loss (CON2 eq. 19) averaged over anchors.

    >>> z, labels = torch.eye(2).repeat(2, 1), torch.tensor([0, 1, 0, 1])
    >>> round(positive_pair_loss(z, labels, 0.5).item(), 4)  # log(1 + 2 exp(-2))
    0.2395
    """
    if z.ndim != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"need z [M, D] and labels [M], got {tuple(z.shape)} and {tuple(labels.shape)}")
    z = F.normalize(z, dim=1)
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~itself
    if not positive.any():
        raise ValueError("no positive pairs: every label occurs once")
    return -(logits - logits.logsumexp(dim=1, keepdim=True))[positive].mean()


def con2_views(
    images: Tensor, context: str, augment: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The 4N views of eqs. 2-3 with their context labels and image indices.

    Rows are [t(x), t(x^c), t'(x), t'(x^c)] (N each) for two independent draws t, t' of the
    weak ``augment``; the context label is 0 for x and 1 for x^c = t_c(x).

    >>> views, ctx, ids = con2_views(torch.rand(2, 1, 4, 4), "flip", lambda x: x)
    >>> views.shape, ctx.tolist(), ids.tolist()
    (torch.Size([8, 1, 4, 4]), [0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1])
    """
    n, device = len(images), images.device
    both = torch.cat([images, context_transform(context)(images)])
    views = torch.cat([augment(both), augment(both)])
    contexts = torch.arange(2, device=device).repeat_interleave(n).repeat(2)
    image_ids = torch.arange(n, device=device).repeat(4)
    return views, contexts, image_ids


def context_silhouette(encoder: nn.Module, images: Tensor, context: str, batch_size: int = 128) -> float:
    """Silhouette score of the two context clusters {g(x)} and {g(t_c x)} of ``images`` (CON2 app. E.4).

    Cosine distance between the encoder's pooled embeddings (eval mode, no gradient); 1 = tight,
    well-separated context clusters, 0 = overlapping, < 0 = mixed up. Costs O(N²) in the number
    of images: pass validation normals, not every training image.

    >>> x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    >>> context_silhouette(nn.Flatten(), x, "invert")  # (1, 0, 0, 0) vs (0, 1, 1, 1): orthogonal
    1.0
    """
    if len(images) < 2:
        raise ValueError(f"the silhouette needs at least 2 images, got {len(images)}")
    a, b = context_features(images, context, encoder, batch_size=batch_size)
    labels = torch.arange(2).repeat_interleave(len(images))
    return float(silhouette_score(torch.cat([a, b]).double().numpy(), labels.numpy(), metric="cosine"))


class CON2Params(ContrastiveParams):
    """Parameters of :class:`CON2Method`; ``proj_dim``, ``proj_hidden`` and the weak-view fields
    are ``contrastive``'s and apply to both heads and to all content views.

    The paper states no temperature (its loss code is SupContrast's, whose default is 0.07);
    0.2 is this project's contrastive default, chosen for CPU-sized batches (see
    :class:`~medad.methods.contrastive.ContrastiveParams`). Not tuned on data.
    """

    context: str = Field("invert", description="context augmentation t_c: invert, flip or equalize")
    temperature: float = Field(0.2, gt=0, le=10, description="τ of ℓ (eq. 1) in L_context, eq. 5")
    content_temperature: float = Field(0.2, gt=0, le=10, description="τ of ℓ (eq. 1) in L_content, eq. 7")
    alpha: float = Field(1.0, ge=0, description="final weight α of L_content (eq. 8), reached linearly from 0")
    alpha_ramp: float = Field(1.0, gt=0, le=1, description="share of training over which α rises from 0 "
                              "(1 = the whole run, the paper; smaller reaches the full weight sooner in short runs)")

    @field_validator("context")
    @classmethod
    def _known_context(cls, name: str) -> str:
        context_transform(name)
        return name


class CON2Method(ContrastiveMethod):
    """Encoder g_θ, context head h_φ (``head``), content head h_ψ (``content_head``) and weak views.

    ``content_weight`` is the current α of eq. 8: 0 until the training loop calls
    :meth:`on_train_step`, which sets it from the share of training done before every step (so a
    resumed run continues the schedule exactly).

    >>> from medad.models.resnet import ResNetEncoder
    >>> m = CON2Method(ResNetEncoder(1, width=8, stem="cifar"), context="flip", alpha=0.5)
    >>> m.on_train_step(0.5); m.content_weight
    0.25
    """

    name: ClassVar[str] = "con2"
    Params: ClassVar[type[MethodParams]] = CON2Params
    params: CON2Params

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__(encoder, **params)  # g_θ, h_φ as ``head`` and the weak views
        p = self.params
        in_dim = int(encoder.out_dim)
        self.content_head = ProjectionHead(in_dim, p.proj_hidden or in_dim, p.proj_dim)
        self.content_weight = 0.0

    def on_train_step(self, progress: float) -> None:
        """α = ``params.alpha`` x min(1, progress / ``alpha_ramp``): the paper's linear annealing
        from 0 over the whole run (``alpha_ramp`` = 1), or over its first share."""
        self.content_weight = self.params.alpha * min(max(progress / self.params.alpha_ramp, 0.0), 1.0)

    def diagnostics(self, val_images: Tensor) -> dict[str, float]:
        """The silhouette of the two context clusters of the validation normals (CON2 app. E.4)."""
        if len(val_images) < 2:
            return {}
        return {"context_silhouette": context_silhouette(self.encoder, val_images[:512], self.params.context)}

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        if len(images) < 2:
            raise ValueError(f"con2 training needs batches of at least 2 images, got {len(images)}")
        p = self.params
        views, contexts, image_ids = con2_views(images, p.context, self.augment)
        h = self.encoder(views)
        gather = distributed.gather
        loss_context = positive_pair_loss(gather(self.head(h)), gather(contexts), p.temperature)
        loss_content = positive_pair_loss(gather(self.content_head(h)), distributed.gather_ids(image_ids, len(images)),
                                          p.content_temperature)
        return {
            "loss": loss_context + self.content_weight * loss_content,
            "loss_context": loss_context.detach(),
            "loss_content": loss_content.detach(),
            "alpha": torch.tensor(self.content_weight),
        }

    def example_figure(self, images: Tensor, path: Path) -> Path:
        """Up to four ``images`` beside their context-augmented versions."""
        return save_context_grid(images[:4], path, [self.params.context])
