"""SimCLR-style contrastive pre-training with the NT-Xent loss (ISBI-2022 recipe).

Gholamipoor, Rafiee & Kollmann, "Pneumonia Detection with Semantic Similarity Scores" (ISBI 2022;
section 5.2 of Rafiee's thesis): two weak views per normal image, an MLP projection to 128
dimensions, NT-Xent (their eq. (1)); detectors then use the pooled encoder output, before the
head. The paper keeps negatives in a MoCo queue with a momentum encoder; here negatives come from
the batch (SimCLR), which needs no second encoder.

>>> import torch
>>> from medad.models.resnet import ResNetEncoder
>>> method = ContrastiveMethod(ResNetEncoder(1, width=8, stem="cifar"), temperature=0.5)
>>> sorted(method.training_loss(torch.rand(4, 1, 16, 16)))
['loss', 'positive_similarity']
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medad import distributed
from medad.augment.weak import WeakAugment
from medad.methods.base import MethodParams, PretrainMethod
from medad.models.heads import ProjectionHead


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent loss, eq. (1) of Gholamipoor, Rafiee & Kollmann (ISBI 2022), mean over all 2N anchors.

    ``z1[i]`` and ``z2[i]`` (``[N, D]``) are the two views of image i. Every one of the 2N
    embeddings is an anchor whose positive is its partner view and whose negatives are the other
    2N - 2 embeddings; similarities are cosines divided by ``temperature``.

    >>> z = torch.eye(3)
    >>> round(nt_xent(z, z, 0.5).item(), 4)  # log(1 + 4 exp(-2)), see tests
    0.4327
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


class ContrastiveParams(MethodParams):
    """Parameters of :class:`ContrastiveMethod`.

    ``temperature`` defaults to 0.2 rather than the paper's 0.07: 0.07 goes with a MoCo queue that
    holds far more negatives than a batch, while here the negatives are the 2N - 2 other views of a CPU
    batch (N = 32-128). SimCLR used 0.1 (ImageNet, batch 4096) and 0.5 (CIFAR-10); MoCo v2 used 0.2.
    A very low temperature concentrates the gradient on the few nearest negatives, which with
    normal-only medical images are often other views of near-identical anatomy. Not tuned on data.
    """

    temperature: float = Field(0.2, gt=0, le=10, description="NT-Xent temperature tau in eq. (1)")
    proj_dim: int = Field(128, ge=1, description="output size of the projection head")
    proj_hidden: int | None = Field(None, ge=1, description="hidden size of the head; None = encoder out_dim")
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="smallest crop, as a share of the image area")
    rotation_degrees: float = Field(20.0, ge=0, le=180, description="rotation angle ~ U(-deg, deg)")
    hflip: bool = Field(True, description="flip horizontally with probability 0.5")
    brightness: float = Field(0.4, ge=0, le=1, description="brightness factor ~ U(1-b, 1+b)")
    contrast: float = Field(0.4, ge=0, le=1, description="contrast factor ~ U(1-c, 1+c)")
    blur_p: float = Field(0.0, ge=0, le=1, description="SimCLR's Gaussian blur (sigma 0.1-2 px) with this "
                          "probability (SimCLR: 0.5); off in the ISBI-2022 recipe")


class ContrastiveMethod(PretrainMethod):
    """Encoder + projection head trained with :func:`nt_xent` on two weak views of each image.

    The encoder must expose ``out_dim``. Both views go through the encoder as one batch of 2N, so
    BatchNorm sees both views; batches need at least 2 images (negatives, and BatchNorm).

    >>> from medad.models.resnet import ResNetEncoder
    >>> m = ContrastiveMethod(ResNetEncoder(1, width=8, stem="cifar"))
    >>> m.params.temperature, m.head(torch.rand(2, 64)).shape
    (0.2, torch.Size([2, 128]))
    """

    name: ClassVar[str] = "contrastive"
    Params: ClassVar[type[MethodParams]] = ContrastiveParams
    params: ContrastiveParams

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__(encoder, **params)
        p = self.params
        in_dim = int(encoder.out_dim)
        self.head = ProjectionHead(in_dim, p.proj_hidden or in_dim, p.proj_dim)
        self.augment = WeakAugment(
            scale=(p.crop_scale_min, 1.0),
            degrees=p.rotation_degrees,
            hflip_p=0.5 if p.hflip else 0.0,
            brightness=p.brightness,
            contrast=p.contrast,
            blur_p=p.blur_p,
        )

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        n = images.shape[0]
        if n < 2:
            raise ValueError(f"contrastive training needs batches of at least 2 images, got {n}")
        views = torch.cat([self.augment(images), self.augment(images)])
        z = self.head(self.encoder(views))
        z1, z2 = z[:n], z[n:]
        with torch.no_grad():
            positive = F.cosine_similarity(z1, z2, dim=1).mean()
        loss = nt_xent(distributed.gather(z1), distributed.gather(z2), self.params.temperature)
        return {"loss": loss, "positive_similarity": positive}
