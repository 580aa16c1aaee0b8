"""PMSACL: pseudo multi-class contrastive pre-training with MedMix lesions (Tian et al.).

Tian et al., "Self-supervised Pseudo Multi-class Pre-training for Unsupervised Anomaly Detection
and Segmentation in Medical Images" (``../shared/papers/001_13f928cbfde55ea4.txt``), eq. (1):

    loss = w_ctr ℓ_ctr + w_pmsacl ℓ_PMSACL + w_aug ℓ_aug + w_pos ℓ_pos      (all weights 1 in the paper)

Each batch image gets a class n in 0..K-1 (:func:`~medad.augment.medmix.lesion_classes`), MedMix
pastes n synthetic lesions into it (x^(n)) and two weak views x^(n,0), x^(n,1) are encoded;
f_θ in the paper's equations is the encoder followed by the 128-d projection head, so the class
centres c_n (eq. 2), ℓ_ctr (eq. 3) and ℓ_PMSACL (eqs. 4-7) live in the projection space, while
ℓ_aug (eq. 8) is a linear head on the pooled encoder output that the detectors use, and ℓ_pos
(eq. 9) is the shared patch-position task. See ``docs/methods/pmsacl.md``.

>>> import torch
>>> from medad.models.resnet import ResNetEncoder
>>> m = PMSACLMethod(ResNetEncoder(1, width=8, stem="cifar"))
>>> sorted(m.training_loss(torch.rand(4, 1, 32, 32)))
['accuracy_aug', 'accuracy_pos', 'loss', 'loss_aug', 'loss_ctr', 'loss_pmsacl', 'loss_pos']
>>> bool(m.centres_ready)
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from medad import distributed
from medad.augment.medmix import MedMix, lesion_classes, save_medmix_grid
from medad.methods.base import MethodParams
from medad.methods.contrastive import ContrastiveMethod, ContrastiveParams
from medad.methods.pretext import PatchPositionHead, frozen_running_stats, patch_position_loss, random_crops


def class_centres(z: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """c_n of eq. (2): the mean of the features ``z [M, D]`` of each class, ``[num_classes, D]``.

    >>> class_centres(torch.tensor([[0.0, 2.0], [2.0, 0.0], [5.0, 5.0]]), torch.tensor([0, 0, 1]), 2)
    tensor([[1., 1.],
            [5., 5.]])
    """
    counts = torch.bincount(classes, minlength=num_classes)
    if len(counts) > num_classes or (counts == 0).any():
        raise ValueError(f"every class 0..{num_classes - 1} needs samples, got counts {counts.tolist()}")
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, classes, z)
    return sums / counts[:, None].to(z)


def multi_centring_loss(z: Tensor, classes: Tensor, centres: Tensor) -> Tensor:
    """ℓ_ctr of eq. (3): mean over samples of the squared distance ‖z_i − c_{n_i}‖².

    >>> z, centres = torch.tensor([[1.0, 1.0], [3.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    >>> multi_centring_loss(z, torch.tensor([0, 1]), centres)  # (0 + 9) / 2
    tensor(4.5000)
    """
    return (z - centres[classes]).pow(2).sum(dim=1).mean()


def pmsacl_loss(z1: Tensor, z2: Tensor, classes: Tensor, centres: Tensor, temperature: float, alpha: float) -> Tensor:
    """ℓ_PMSACL of eqs. (4)-(7), mean over all 2M anchors.

    ``z1[i]`` and ``z2[i]`` (``[M, D]``) are the two weak views of strongly augmented image i of
    class ``classes[i]``. Each feature is centred by its class centre and L2-normalised (eq. 6).
    For an anchor of class n, every other view of the batch, of class m, enters the denominator
    with exp(κ(n, m) f·f'), κ(n, n) = 1/(ατ) and κ(n, m ≠ n) = 1/τ (eq. 7); the numerator is the
    partner view's own denominator term, exp(κ(n, n) f·f_partner). (The extracted paper text shows
    a factor ½ there; see ``docs/methods/pmsacl.md`` for why that reading is not used.)

    >>> z = torch.eye(2)
    >>> round(pmsacl_loss(z, z, torch.tensor([0, 1]), torch.zeros(2, 2), 0.5, 1.0).item(), 4)  # log(1 + 2 e^-2)
    0.2395
    """
    if z1.shape != z2.shape or z1.ndim != 2 or classes.shape != z1.shape[:1]:
        raise ValueError(
            f"need z1, z2 [M, D] and classes [M], got {tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(classes.shape)}"
        )
    m = len(z1)
    labels = torch.cat([classes, classes])
    f = F.normalize(torch.cat([z1, z2]) - centres[labels], dim=1)
    same = labels[:, None] == labels[None, :]
    kappa = torch.where(same, f.new_tensor(1.0 / (alpha * temperature)), f.new_tensor(1.0 / temperature))
    logits = (kappa * (f @ f.T)).masked_fill(torch.eye(2 * m, dtype=torch.bool, device=f.device), float("-inf"))
    partner = torch.cat([torch.arange(m, 2 * m), torch.arange(m)]).to(f.device)
    return F.cross_entropy(logits, partner)


class PMSACLParams(ContrastiveParams):
    """Parameters of :class:`PMSACLMethod`; the projection head and weak-view fields are shared
    with the contrastive method (their defaults are this project's weak views, see its docs).

    ``temperature`` 0.2 is the CCD paper's value (the PMSACL paper, its successor from the same
    authors, states none); ``alpha`` is not given in the paper either: 0.5 follows its statement
    that same-class pairs get a smaller temperature ατ.
    """

    temperature: float = Field(0.2, gt=0, le=10, description="τ of eq. (7), different-class pairs")
    alpha: float = Field(0.5, gt=0, le=10, description="α of eq. (7): same-class pairs use temperature ατ")
    num_classes: int = Field(4, ge=2, le=10, description="|A|: classes with 0 .. num_classes-1 lesions")
    lesion_size_min: float = Field(0.1, gt=0, le=1, description="smallest lesion side, share of the image side")
    lesion_size_max: float = Field(0.25, gt=0, le=1, description="largest lesion side, share of the image side")
    alteration_p: float = Field(0.25, ge=0, le=1, description="probability of each of the four lesion alterations")
    view: Literal["global", "local"] = Field("global", description="local: train on random crops")
    local_patch_size: int = Field(32, ge=8, description="crop side of the local view (the paper: 32)")
    patch_size: int | None = Field(None, ge=2, description="ℓ_pos patch side; None = min(side // 4, local)")
    jitter: int | None = Field(None, ge=0, description="ℓ_pos neighbour jitter; None = patch // 4")
    medmix_foreground: float | None = Field(
        None, gt=0, lt=1, description="MedMix cuts from and pastes into pixels above this share of the image's "
        "99th percentile (None = anywhere, the paper)",
    )
    medmix_feather: float = Field(0.0, ge=0, le=1, description="MedMix border blend, share of the lesion half-side "
                                  "(0 = hard edge, the paper)")
    weight_ctr: float = Field(1.0, ge=0, description="weight of ℓ_ctr, eq. (3)")
    weight_pmsacl: float = Field(1.0, ge=0, description="weight of ℓ_PMSACL, eqs. (4)-(7)")
    weight_aug: float = Field(1.0, ge=0, description="weight of ℓ_aug, eq. (8)")
    weight_pos: float | None = Field(
        None, ge=0, description="weight of ℓ_pos, eq. (9); None = 1 for view=local, 0 for the global model "
        "(PMSACL §4.2, CCD Fig. 1: the position task fine-tunes the local model only)"
    )

    @model_validator(mode="after")
    def _lesion_range(self) -> PMSACLParams:
        if self.lesion_size_min > self.lesion_size_max:
            raise ValueError(f"lesion_size_min {self.lesion_size_min} > lesion_size_max {self.lesion_size_max}")
        return self


class PMSACLMethod(ContrastiveMethod):
    """Encoder + projection head, class centres, ℓ_aug head and patch-position head.

    The class centres (eq. 2) are buffers set once, before training, over the whole training set
    with the untrained encoder, and then frozen, as in the paper (:meth:`on_train_start`): every
    image is given every class once (K x N MedMix images, one weak view each, encoded in batches
    that hold all classes, no gradient, BatchNorm on batch statistics without touching its running
    ones). A method used outside the training loop sets them from its first training batch
    instead. They are saved in ``state_dict`` with the flag ``centres_ready``, so a resumed run
    keeps them.

    >>> from medad.models.resnet import ResNetEncoder
    >>> m = PMSACLMethod(ResNetEncoder(1, width=8, stem="cifar"), num_classes=3)
    >>> m.centres.shape, m.aug_head.out_features, bool(m.centres_ready)
    (torch.Size([3, 128]), 3, False)
    """

    name: ClassVar[str] = "pmsacl"
    Params: ClassVar[type[MethodParams]] = PMSACLParams
    params: PMSACLParams
    centres: Tensor
    centres_ready: Tensor

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__(encoder, **params)  # the encoder, projection head f_θ and weak views
        p = self.params
        in_dim = int(encoder.out_dim)
        self.aug_head = nn.Linear(in_dim, p.num_classes)
        self.pos_head = PatchPositionHead(in_dim)
        self.register_buffer("centres", torch.zeros(p.num_classes, p.proj_dim))
        self.register_buffer("centres_ready", torch.tensor(False))
        self._centres_known = False  # centres_ready seen true on the host (see _centres_set)
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_centres_known", False))
        q = p.alteration_p
        self.medmix = MedMix(
            size=(p.lesion_size_min, p.lesion_size_max),
            max_lesions=p.num_classes - 1,
            jitter_p=q,
            noise_p=q,
            fisheye_p=q,
            wave_p=q,
            foreground=p.medmix_foreground,
            feather=p.medmix_feather,
        )

    def project(self, strong: Tensor) -> tuple[Tensor, Tensor]:
        """One weak view of each strongly augmented image → (encoder output, projection f_θ)."""
        h = self.encoder(self.augment(strong))
        return h, self.head(h)

    @torch.no_grad()
    def init_centres(self, images: Tensor, batch_size: int = 64) -> None:
        """Set the frozen class centres c_n (eq. 2): the mean projection of every class of MedMix
        applied to every one of ``images``, in batches of ``batch_size`` images (x K classes)."""
        k = self.params.num_classes
        device = self.centres.device
        sums = torch.zeros_like(self.centres, dtype=torch.float64)
        count = 0
        with frozen_running_stats(self.encoder), frozen_running_stats(self.head):
            for batch in images.split(batch_size):
                if len(batch) < 2:
                    continue
                batch = self._view(batch.to(device))
                n = len(batch)
                strong = torch.cat([self.medmix(batch, torch.full((n,), c))[0] for c in range(k)])
                _, z = self.project(strong)
                sums += z.view(k, n, -1).sum(1).double()
                count += n
        self.centres.copy_((sums / max(count, 1)).to(self.centres.dtype))
        self.centres_ready.fill_(True)

    def _centres_set(self) -> bool:
        """``centres_ready``, read from the device once it is true (not at every step on a GPU)."""
        if not self._centres_known:
            self._centres_known = bool(self.centres_ready)
        return self._centres_known

    def on_train_start(self, total_steps: int, images: Tensor) -> None:
        """The class centres over the whole training set, unless already set (a resumed run)."""
        if not self._centres_set():
            was_training = self.training
            self.train()
            self.init_centres(images)
            self.train(was_training)

    def _view(self, images: Tensor) -> Tensor:
        """The images the losses see: as given, or one random local crop each (``view="local"``)."""
        return images if self.params.view == "global" else random_crops(images, self.params.local_patch_size)

    def pos_patch(self, images: Tensor) -> tuple[int, int]:
        """Patch side and jitter of ℓ_pos for ``images`` (the parameters, else a 3x3 layout that fits)."""
        p = self.params
        size = p.patch_size or min(images.shape[-2:]) // 4
        if p.patch_size is None and p.view == "local":
            size = min(size, p.local_patch_size)
        return size, size // 4 if p.jitter is None else p.jitter

    def example_figure(self, images: Tensor, path: Path) -> Path:
        """MedMix examples (normal, then 1, 2, 3 ... lesions) of up to four ``images``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_medmix_grid(images[:4].cpu(), path, columns=self.params.num_classes, mix=self.medmix)

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        p = self.params
        x = self._view(images)
        n = len(x)
        if n < 2:
            raise ValueError(f"PMSACL training needs batches of at least 2 images, got {n}")
        if not self._centres_set():
            if not self.training:
                raise RuntimeError("PMSACL class centres are not set: call training_loss in training mode first")
            self.init_centres(images)
        classes = lesion_classes(n, p.num_classes)  # on the host: MedMix checks them there
        strong, _ = self.medmix(x, classes)
        classes = classes.to(x.device)
        h, z = self.project(torch.cat([strong, strong]))
        labels = torch.cat([classes, classes])
        ctr = multi_centring_loss(z, labels, self.centres)
        gather = distributed.gather
        con = pmsacl_loss(gather(z[:n]), gather(z[n:]), gather(classes), self.centres, p.temperature, p.alpha)
        logits = self.aug_head(h)
        aug = F.cross_entropy(logits, labels)
        weight_pos = p.weight_pos if p.weight_pos is not None else float(p.view == "local")
        loss = p.weight_ctr * ctr + p.weight_pmsacl * con + p.weight_aug * aug
        if weight_pos > 0:
            pos, accuracy_pos = patch_position_loss(self.encoder, self.pos_head, images, *self.pos_patch(images))
            loss = loss + weight_pos * pos
        else:
            pos = accuracy_pos = torch.zeros((), device=x.device)
        with torch.no_grad():
            accuracy_aug = (logits.argmax(dim=1) == labels).float().mean()
        return {
            "loss": loss,
            "loss_ctr": ctr.detach(),
            "loss_pmsacl": con.detach(),
            "loss_aug": aug.detach(),
            "loss_pos": pos.detach(),
            "accuracy_aug": accuracy_aug,
            "accuracy_pos": accuracy_pos,
        }
