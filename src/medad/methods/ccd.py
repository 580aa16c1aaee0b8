"""CCD: constrained contrastive distribution learning (Tian et al., MICCAI 2021), method ``ccd``.

The loss is eq. (1), ``w_con ℓ_con + w_cla ℓ_cla + w_pos ℓ_pos`` (all weights 1 in the paper):

- ℓ_con, eq. (2): every image is copied under each strong augmentation of A_n
  (:func:`medad.augment.strong.apply_strong`, the identity included as class 0), and each copy is
  a sample of its own: two weak views of it are positives, all other views of all copies in the
  batch (other images, and the other strong versions of the same image) are negatives. This is
  NT-Xent (:func:`medad.methods.contrastive.nt_xent`) over the K·N shifted images, CSI's
  "shifted instances" formulation that CCD builds on.
- ℓ_cla, eq. (3): a linear layer on the encoder output predicts which strong augmentation each
  view carries (:func:`shift_classification_loss`).
- ℓ_pos, eq. (4): the relative position of two neighbouring patches
  (:func:`medad.methods.pretext.patch_position_loss`).

``view="local"`` trains on random ``local_patch_size`` crops of the images instead (the paper's
local model). The paper sums the anomaly maps of a global and a local model; in medad each is its
own run, and detectors use either encoder on whole images as usual (summing two runs' maps is not
implemented yet).

>>> import torch
>>> from medad.models.resnet import ResNetEncoder
>>> method = CCDMethod(ResNetEncoder(1, width=8, stem="cifar"), strong_augmentations=["rotation"])
>>> sorted(method.training_loss(torch.rand(2, 1, 16, 16)))
['accuracy_cla', 'accuracy_pos', 'loss', 'loss_cla', 'loss_con', 'loss_pos']
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from medad import distributed
from medad.augment.medmix import lesion_classes
from medad.augment.strong import apply_strong, strong_transforms
from medad.methods.base import MethodParams
from medad.methods.contrastive import ContrastiveMethod, ContrastiveParams, nt_xent
from medad.methods.pretext import PatchPositionHead, patch_position_loss, random_crops


def shift_classification_loss(logits: Tensor, class_ids: Tensor) -> tuple[Tensor, Tensor]:
    """ℓ_cla of CCD eq. (3): cross-entropy of the strong-augmentation class, and accuracy (detached).

    >>> loss, accuracy = shift_classification_loss(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
    >>> round(loss.item(), 4), accuracy.item()  # (log(1 + e^-2) + log(1 + e^2)) / 2
    (1.1269, 0.5)
    """
    with torch.no_grad():
        accuracy = (logits.argmax(1) == class_ids).float().mean()
    return F.cross_entropy(logits, class_ids), accuracy


def patch_geometry(side: int, patch_size: int | None = None, jitter: int | None = None) -> tuple[int, int]:
    """ℓ_pos patch size and jitter for images of ``side`` px; ``None`` picks the defaults.

    Default patch: a quarter of the side, so the 3x3 arrangement covers three quarters of the image.
    Default jitter: a quarter of the patch, reduced until the arrangement still fits.

    >>> patch_geometry(32), patch_geometry(28), patch_geometry(256), patch_geometry(64, 12)
    ((8, 2), (7, 1), (64, 16), (12, 3))
    """
    size = patch_size if patch_size is not None else max(1, side // 4)
    if jitter is None:
        jitter = max(0, min(size // 4, (side - 3 * size) // 4))
    return size, jitter


def random_hflip(images: Tensor) -> Tensor:
    """Flip each image horizontally with probability 1/2 (global RNG)."""
    flip = (torch.rand(len(images)) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


class CCDParams(ContrastiveParams):
    """Parameters of :class:`CCDMethod`; the weak views and projection head are ``contrastive``'s.

    ``temperature`` 0.2 is the paper's value. ``strong_augmentations`` defaults to
    ``["permutation"]``, the paper's best on Hyper-Kvasir (colonoscopy) and usable on any image;
    use ``["rotation"]`` (the paper's choice for LAG fundus images) when normal images have a
    canonical orientation. ``hflip`` flips before the strong augmentation (as in CSI), because a
    flip after a 90° rotation would turn it into a 270° one.
    """

    strong_augmentations: list[str] = Field(
        default_factory=lambda: ["permutation"],
        description="families of A_n (rotation, permutation, cutout, noise); identity is class 0",
    )
    weight_con: float = Field(1.0, ge=0, description="weight of the contrastive distribution loss, eq. (2)")
    weight_cla: float = Field(1.0, ge=0, description="weight of the strong-augmentation classification, eq. (3)")
    weight_pos: float | None = Field(
        None, ge=0, description="weight of the patch-position loss, eq. (4); None = 1 for view=local, 0 for the "
        "global model (CCD Fig. 1: the position task belongs to the local branch)"
    )
    patch_size: int | None = Field(None, ge=1, description="ℓ_pos patch side; None = a quarter of the image side")
    jitter: int | None = Field(None, ge=0, description="ℓ_pos jitter in px; None = patch/4, reduced to fit")
    shifts: Literal["all", "one"] = Field(
        "all", description="all: every image in every strong version in each batch (CSI, K·N samples); one: one "
        "random version per image (N samples, as the CCD authors' code draws (image, class) pairs)"
    )
    view: Literal["global", "local"] = Field("global", description="train on whole images or on local crops")
    local_patch_size: int = Field(32, ge=4, description="crop side for view='local' (the paper: 32)")

    @field_validator("strong_augmentations")
    @classmethod
    def _known_names(cls, names: list[str]) -> list[str]:
        strong_transforms(names)
        return names


class CCDMethod(ContrastiveMethod):
    """Encoder + projection head (ℓ_con) + linear shift classifier (ℓ_cla) + patch-position head (ℓ_pos).

    A batch of N images becomes K·N shifted images and 2·K·N weak views, all encoded as one
    batch (K = 1 + the number of strong transforms, e.g. 4 for ``permutation``), plus 2·N patches
    for ℓ_pos.

    >>> from medad.models.resnet import ResNetEncoder
    >>> m = CCDMethod(ResNetEncoder(1, width=8, stem="cifar"), strong_augmentations=["rotation", "noise"])
    >>> m.shift_classifier.out_features, m.params.temperature, m.head(torch.rand(2, 64)).shape
    (5, 0.2, torch.Size([2, 128]))
    """

    name: ClassVar[str] = "ccd"
    Params: ClassVar[type[MethodParams]] = CCDParams
    params: CCDParams

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__(encoder, **params)
        p = self.params
        self.augment = replace(self.augment, hflip_p=0.0)  # flipped before the shift instead
        in_dim = int(encoder.out_dim)
        self.shift_classifier = nn.Linear(in_dim, len(strong_transforms(p.strong_augmentations)))
        self.position_head = PatchPositionHead(in_dim)

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        if len(images) < 2:
            raise ValueError(f"ccd training needs batches of at least 2 images, got {len(images)}")
        p = self.params
        x = random_crops(images, p.local_patch_size) if p.view == "local" else images
        shifted, class_ids = apply_strong(random_hflip(x) if p.hflip else x, p.strong_augmentations)
        if p.shifts == "one":  # one class per image: rows k*N + i of the class-major stack
            n, k = len(x), len(shifted) // len(x)
            pick = lesion_classes(n, k).to(x.device) * n + torch.arange(n, device=x.device)
            shifted, class_ids = shifted[pick], class_ids[pick]
        m = len(shifted)
        features = self.encoder(torch.cat([self.augment(shifted), self.augment(shifted)]))
        z = self.head(features)
        loss_con = nt_xent(distributed.gather(z[:m]), distributed.gather(z[m:]), p.temperature)
        loss_cla, accuracy_cla = shift_classification_loss(self.shift_classifier(features), class_ids.repeat(2))
        loss = p.weight_con * loss_con + p.weight_cla * loss_cla
        weight_pos = p.weight_pos if p.weight_pos is not None else float(p.view == "local")
        if weight_pos > 0:
            patch_size, jitter = patch_geometry(min(x.shape[-2:]), p.patch_size, p.jitter)
            loss_pos, accuracy_pos = patch_position_loss(self.encoder, self.position_head, x, patch_size, jitter)
            loss = loss + weight_pos * loss_pos
        else:
            loss_pos = accuracy_pos = torch.zeros((), device=x.device)
        return {
            "loss": loss,
            "loss_con": loss_con.detach(),
            "loss_cla": loss_cla.detach(),
            "loss_pos": loss_pos.detach(),
            "accuracy_cla": accuracy_cla,
            "accuracy_pos": accuracy_pos,
        }
