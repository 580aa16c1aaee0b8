"""Self-distillation with negative samples (Rafiee et al.), method ``dino_neg``.

Rafiee, Gholamipoor, Adaloglou, Jaxy, Ramakers & Kollmann, "Self-Supervised Anomaly Detection by
Self-Distillation and Negative Sampling" (ICANN 2022), and its medical follow-up (Rafiee,
Gholamipoor & Kollmann, 2022); chapters 6 and 7 of Rafiee's thesis
(``../shared/papers/003_3ef867d09f97ff90.txt``). Equation numbers below are the ICANN paper's.

DINO (Caron et al. 2021) with an extra term. A student g_s = head_s ∘ f_s and a teacher
g_t = head_t ∘ f_t map a view to K logits; p = softmax(g / τ) (eq. 1). The teacher is the
exponential moving average of the student (eq. 2) and sees only the two global views; the student
sees every view. With V = global + local views of an image and G the global ones:

- L_pos (eq. 3), :func:`distillation_loss`: −Σ_{x''∈G} Σ_{x'∈V, x'≠x''} p_t(x'') · log p_s(x'),
  the teacher centred by c and sharpened, p_t = softmax((g_t − c) / τ_t), averaged over the pairs
  and the batch (as DINO's code does);
- L_neg (eq. 4), :func:`uniformity_loss`: −(1/K) Σ_k log p_s^k(x⁻), the cross-entropy from the
  uniform distribution u to the student's output on negative views x⁻ (eq. 3 with τ_t → ∞), averaged
  over negative views; it equals KL(u ‖ p_s) + log K, so its minimum, at p_s = u, is log K;
- L = L_pos + λ L_neg (eq. 5).

Negative views are a shifting transformation of the batch images
(:mod:`medad.augment.negatives`; or of auxiliary images, ``aux_path``) followed by the same view
augmentation: one global and ``n_local_negatives`` local views, as in sec. 4 of the paper.
Detectors use the teacher's backbone, as in the paper (ch. 6.1.4): it is this method's
``encoder``; the student's backbone is ``student_encoder``. See ``docs/methods/dino_neg.md``.

>>> from medad.models.resnet import ResNetEncoder
>>> m = DinoNegMethod(ResNetEncoder(1, width=8, stem="cifar"), out_dim=64, n_local=2, n_local_negatives=1)
>>> sorted(m.training_loss(torch.rand(4, 1, 16, 16)))
['loss', 'loss_neg', 'loss_pos', 'teacher_entropy', 'teacher_mean_entropy', 'teacher_temp']
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from medad import distributed
from medad.augment.negatives import check_kinds, make_negatives
from medad.augment.weak import WeakAugment
from medad.data.preprocessor import Preprocessor
from medad.methods.base import MethodParams, PretrainMethod


def distillation_loss(
    student: Tensor, teacher: Tensor, centre: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """L_pos of eq. (3): mean over pairs (teacher view g, student view v ≠ g) and images of
    −Σ_k p_t^k log p_s^k, with p_t = softmax((teacher − centre) / teacher_temp) (no gradient) and
    p_s = softmax(student / student_temp).

    ``student [V, N, K]`` holds every student view, the first ``G`` being the same global views as
    ``teacher [G, N, K]``; ``centre [K]``.

    >>> s, t = torch.zeros(3, 2, 4), torch.zeros(2, 2, 4)  # uniform outputs: log K
    >>> round(distillation_loss(s, t, torch.zeros(4), 0.1, 0.04).item(), 4) == round(math.log(4), 4)
    True
    """
    views, globals_ = student.shape[0], teacher.shape[0]
    if teacher.shape[1:] != student.shape[1:] or views < globals_:
        shapes = f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        raise ValueError(f"need student [V, N, K] and teacher [G, N, K] with V >= G, got {shapes}")
    p_t = F.softmax((teacher - centre) / teacher_temp, dim=-1).detach()
    log_p_s = F.log_softmax(student / student_temp, dim=-1)
    cross = -torch.einsum("gnk,vnk->gv", p_t, log_p_s) / student.shape[1]  # [G, V], mean over images
    other = ~torch.eye(globals_, views, dtype=torch.bool, device=student.device)
    return cross[other].mean()


def uniformity_loss(student: Tensor, student_temp: float) -> Tensor:
    """L_neg of eq. (4): mean over rows of ``student [..., K]`` of −(1/K) Σ_k log p_s^k.

    The cross-entropy from the uniform distribution to p_s = softmax(student / student_temp);
    log K for uniform outputs and larger otherwise.

    >>> round(uniformity_loss(torch.zeros(5, 8), 0.1).item(), 4) == round(math.log(8), 4)
    True
    """
    return -F.log_softmax(student / student_temp, dim=-1).mean()


def entropies(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Entropies (nats) of p = softmax(logits / temperature) over the last dimension: the mean of
    each row's, and that of the mean distribution. Both ≈ log K: uniform collapse; both ≈ 0: one
    class for everything; healthy DINO: a low first and a high second.

    >>> [round(h.item(), 4) for h in entropies(torch.tensor([[9.0, 0.0], [0.0, 9.0]]), 1.0)]
    [0.0012, 0.6931]
    """
    p = F.softmax(logits.flatten(0, -2) / temperature, dim=-1)
    mean = p.mean(0)
    return -torch.xlogy(p, p).sum(-1).mean(), -torch.xlogy(mean, mean).sum()


def auto_momentum(total_steps: int, forget: float = 5.0, ceiling: float = 0.996, floor: float = 0.9) -> float:
    """Starting EMA momentum m₀ for a run of ``total_steps``: with m rising from m₀ to 1 on DINO's
    cosine, the teacher keeps ∏ m_t ≈ exp(−Σ(1 − m_t)) = exp(−(1 − m₀) S / 2) of its initial
    weights; m₀ = 1 − 2·``forget``/S leaves exp(−5) < 1 % of them, capped at DINO's 0.996 (which
    long runs keep: S = 125k ImageNet steps) and floored at 0.9 for very short runs.

    >>> auto_momentum(180), auto_momentum(125_000), auto_momentum(20)
    (0.9444444444444444, 0.996, 0.9)
    """
    return min(ceiling, max(floor, 1.0 - 2.0 * forget / max(total_steps, 1)))


def cosine_momentum(start: float, progress: float) -> float:
    """DINO's teacher momentum schedule: ``start`` at progress 0, rising on a half cosine to 1.

    >>> cosine_momentum(0.996, 0.0), round(cosine_momentum(0.996, 0.5), 6), cosine_momentum(0.996, 1.0)
    (0.996, 0.998, 1.0)
    """
    return 1.0 - (1.0 - start) * (1.0 + math.cos(math.pi * progress)) / 2.0


class DinoHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU; BatchNorm after the hidden layers when
    ``batch_norm``, DINO's ``use_bn_in_head``) to a bottleneck, L2 normalisation, then a linear layer
    to ``out_dim`` logits whose weight rows are normalised to unit length (weight normalisation with
    the gain fixed to 1, DINO's ``norm_last_layer``), so every logit is a cosine.

    >>> DinoHead(16, 32, hidden_dim=8, bottleneck_dim=4)(torch.rand(3, 16)).abs().max() <= 1
    tensor(True)
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128, batch_norm: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for dim in (in_dim, hidden_dim):
            layers += [nn.Linear(dim, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if batch_norm else []), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=-1))


@dataclass(frozen=True)
class MultiCrop:
    """DINO's view augmentation T: random resized crops + flip + brightness/contrast + grey-scale +
    Gaussian blur; local views are smaller crops resized to ``local_size`` of the image side.

    Blur probabilities follow DINO (global views 1.0 and 0.1, local views 0.5); the blur sigma,
    U(0.1, 2.0) px for DINO's 224 px views, is scaled by side / 224.

    >>> mc = MultiCrop()
    >>> mc.global_view(torch.rand(2, 1, 32, 32), 0).shape, mc.local_view(torch.rand(2, 1, 32, 32)).shape
    (torch.Size([2, 1, 32, 32]), torch.Size([2, 1, 16, 16]))
    """

    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size: float = 0.5
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    grayscale_p: float = 0.2

    def _augment(self, side: int, scale: tuple[float, float], blur_p: float) -> WeakAugment:
        sigma = side / 224
        return WeakAugment(
            scale=scale, degrees=0.0, hflip_p=self.hflip_p, brightness=self.brightness, contrast=self.contrast,
            grayscale_p=self.grayscale_p, blur_p=blur_p, blur_sigma=(0.1 * sigma, 2.0 * sigma),
        )

    def global_view(self, x: Tensor, index: int) -> Tensor:
        """Global view number ``index`` (0: always blurred, else blurred with probability 0.1)."""
        return self._augment(x.shape[-1], self.global_scale, 1.0 if index == 0 else 0.1)(x)

    def local_view(self, x: Tensor) -> Tensor:
        """A local view: a small crop, augmented at full resolution, then resized (antialiased)."""
        h, w = x.shape[-2:]
        size = (max(1, round(h * self.local_size)), max(1, round(w * self.local_size)))
        view = self._augment(w, self.local_scale, 0.5)(x)
        return F.interpolate(view, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


class DinoNegParams(MethodParams):
    """Parameters of :class:`DinoNegMethod`; the defaults and their reasons are in the docs.

    Paper values: τ_s = 0.1, τ_t linear 0.04 → 0.01 (thesis ch. 7; 0.055 → 0.01 for CIFAR-10 in
    ch. 6), K = 4096, λ = 1, 8 local views for positives and for negatives, centre momentum 0.9
    and teacher momentum 0.996 → 1 (DINO's). Three defaults differ, each measured at CPU budgets
    (docs/methods/dino_neg.md): no local views (``n_local = n_local_negatives = 0``; with them
    L_pos barely learns in 30–60 epochs and the score stays below chance), τ_t from 0.02 (0.04
    collapsed to uniform outputs), and a narrower head than DINO's (hidden 512, bottleneck 128 vs
    2048, 256) with BatchNorm (``head_bn``; without it training collapsed within a few epochs).
    ``n_local=8, n_local_negatives=8, teacher_temp_start=0.04`` is the paper's setting for long runs.
    """

    out_dim: int = Field(4096, ge=2, description="K, the number of soft classes (the paper: 4096)")
    hidden_dim: int = Field(512, ge=1, description="hidden width of the head MLP (DINO: 2048)")
    bottleneck_dim: int = Field(128, ge=1, description="L2-normalised bottleneck of the head (DINO: 256)")
    head_bn: bool = Field(True, description="BatchNorm after the hidden layers of the head (DINO: off for ViT)")
    student_temp: float = Field(0.1, gt=0, description="τ_s of eq. (1)")
    teacher_temp_start: float = Field(
        0.02, gt=0, description="τ_t at the start, linear in training progress (the thesis: 0.04)"
    )
    teacher_temp_end: float = Field(0.01, gt=0, description="τ_t at the end of training")
    centre_momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the teacher centre c")
    teacher_momentum: float | Literal["auto"] = Field(
        "auto", description="EMA momentum m of eq. (2) at the start (→ 1 on a cosine); auto: DINO's 0.996, "
        "lowered for short runs so that the teacher keeps < 1 % of its random initial weights"
    )
    n_local: int = Field(0, ge=0, description="local views per image for L_pos (the paper: 8)")
    n_local_negatives: int = Field(0, ge=0, description="local views per negative, beside one global (paper: 8)")
    global_scale: tuple[float, float] = Field((0.4, 1.0), description="area share of global crops")
    local_scale: tuple[float, float] = Field((0.05, 0.4), description="area share of local crops")
    local_size: float = Field(0.5, gt=0, le=1, description="side of local views, share of the image side")
    hflip: bool = Field(True, description="flip views horizontally with probability 0.5")
    brightness: float = Field(0.4, ge=0, le=1, description="brightness factor ~ U(1-b, 1+b)")
    contrast: float = Field(0.4, ge=0, le=1, description="contrast factor ~ U(1-c, 1+c)")
    negatives: list[str] = Field(
        default_factory=lambda: ["rotate90", "permute4"],
        description="shifting transformations for negatives, one drawn per image "
        "(rotate90, rotate_random, permute4, permute16, pixel_shuffle)",
    )
    negative_weight: float = Field(1.0, ge=0, description="λ of eq. (5); 0 = plain DINO (no negatives computed)")
    aux_path: str | None = Field(None, description="folder of auxiliary images used as negatives too")
    aux_fraction: float = Field(0.5, ge=0, le=1, description="share of negatives drawn from aux_path")
    aux_shift: bool = Field(True, description="shift auxiliary negatives too (the paper's 'Rot. ImgN')")
    negative_batches: Literal["shared", "separate"] = Field(
        "shared", description="student forward pass of the negatives: in the same BatchNorm batches as the "
        "positive views (shared, as built first), or in batches of their own (separate)"
    )

    @field_validator("negatives")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        return check_kinds(kinds)

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"a crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        return scale


class DinoNegMethod(PretrainMethod):
    """Student (``student_encoder`` + ``student_head``) trained on L_pos + λ L_neg; teacher
    (``encoder`` + ``teacher_head``) = EMA of the student, with ``requires_grad=False``.

    The teacher's parameters follow eq. (2) in :meth:`after_optimizer_step`; its BatchNorm running
    statistics come from its own forward passes on global views of normal images (as in DINO),
    never from local crops or negatives. The centre ``c`` is a buffer updated with the teacher
    outputs of every training-mode call (``c ← μ c + (1 − μ) mean g_t``); eval-mode calls (the
    validation loss) change neither teacher nor centre. τ_t and m follow the training progress
    through :meth:`on_train_step`. Auxiliary images (``aux_path``) are read once, on the first
    call, at the batch's size and channels.

    >>> from medad.models.resnet import ResNetEncoder
    >>> m = DinoNegMethod(ResNetEncoder(1, width=8, stem="cifar"), out_dim=32)
    >>> any(p.requires_grad for p in m.encoder.parameters()), m.centre.shape
    (False, torch.Size([32]))
    """

    name: ClassVar[str] = "dino_neg"
    Params: ClassVar[type[MethodParams]] = DinoNegParams
    params: DinoNegParams
    centre: Tensor

    def __init__(self, encoder: nn.Module, **params: Any):
        super().__init__(encoder, **params)
        p = self.params
        self.student_encoder = copy.deepcopy(encoder)
        self.student_head = DinoHead(int(encoder.out_dim), p.out_dim, p.hidden_dim, p.bottleneck_dim, p.head_bn)
        self.teacher_head = copy.deepcopy(self.student_head)
        for teacher in (self.encoder, self.teacher_head):
            teacher.requires_grad_(False)
        self.register_buffer("centre", torch.zeros(p.out_dim))
        self.views = MultiCrop(
            global_scale=p.global_scale, local_scale=p.local_scale, local_size=p.local_size,
            hflip_p=0.5 if p.hflip else 0.0, brightness=p.brightness, contrast=p.contrast,
        )
        self.teacher_temp = p.teacher_temp_start
        self.start_momentum = 0.996 if p.teacher_momentum == "auto" else p.teacher_momentum
        self.momentum = self.start_momentum
        self._aux: Tensor | None = None

    def on_train_start(self, total_steps: int, images: Tensor) -> None:
        """m₀ from the run's length when ``teacher_momentum`` is auto (:func:`auto_momentum`)."""
        if self.params.teacher_momentum == "auto":
            self.start_momentum = auto_momentum(total_steps)

    def on_train_step(self, progress: float) -> None:
        """τ_t linear from ``teacher_temp_start`` to ``teacher_temp_end``; m on DINO's cosine to 1."""
        p = self.params
        self.teacher_temp = p.teacher_temp_start + (p.teacher_temp_end - p.teacher_temp_start) * progress
        self.momentum = cosine_momentum(self.start_momentum, progress)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Eq. (2): θ_t ← m θ_t + (1 − m) θ_s for every parameter of backbone and head."""
        m = self.momentum
        for student, teacher in ((self.student_encoder, self.encoder), (self.student_head, self.teacher_head)):
            for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
                t.mul_(m).add_(s.detach(), alpha=1.0 - m)

    def student(self, views: list[Tensor], n: int) -> Tensor:
        """Student logits ``[len(views), n, K]`` of same-size views of ``n`` images (one forward pass)."""
        if not views:
            return self.centre.new_empty(0, n, self.params.out_dim)
        logits = self.student_head(self.student_encoder(torch.cat(views)))
        return logits.view(len(views), n, -1)

    def negative_images(self, images: Tensor) -> Tensor:
        """Shifted copies of ``images``, each image's slot taken by an auxiliary image with
        probability ``aux_fraction`` when ``aux_path`` is set (shifted too unless ``aux_shift`` is off)."""
        p = self.params
        if p.aux_path is None:
            return make_negatives(images, p.negatives)
        aux = self.aux_images(images)
        n = len(images)
        pick = aux[torch.randint(len(aux), (n,))].to(images.device, images.dtype)
        use_aux = (torch.rand(n) < p.aux_fraction).to(images.device).view(-1, 1, 1, 1)
        base = torch.where(use_aux, pick, images)
        shifted = make_negatives(base, p.negatives)
        return shifted if p.aux_shift else torch.where(use_aux, base, shifted)

    def aux_images(self, like: Tensor) -> Tensor:
        """The auxiliary images at the size and channels of ``like`` (read once, kept on the CPU),
        through the run's preprocessing (``self.preprocessor``, with its intensity scaling) when set."""
        if self._aux is None or self._aux.shape[1:] != like.shape[1:]:
            if like.shape[-1] != like.shape[-2]:
                raise ValueError(f"auxiliary negatives need square batches, got {tuple(like.shape[-2:])}")
            preprocessor = self.preprocessor or Preprocessor(image_size=like.shape[-1], channels=like.shape[1])
            self._aux = preprocessor(self.params.aux_path).cpu()
            if self._aux.shape[1:] != like.shape[1:]:
                raise ValueError(f"auxiliary negatives of shape {tuple(self._aux.shape[1:])} do not match the "
                                 f"batches {tuple(like.shape[1:])}")
        return self._aux

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        p, n = self.params, len(images)
        full = [self.views.global_view(images, i) for i in range(2)]
        small = [self.views.local_view(images) for _ in range(p.n_local)]
        with torch.no_grad():
            teacher = self.teacher_head(self.encoder(torch.cat(full))).view(2, n, -1)
        with_negatives = p.negative_weight > 0
        if with_negatives:
            shifted = self.negative_images(images)
            full.append(self.views.global_view(shifted, 1))
            small += [self.views.local_view(shifted) for _ in range(p.n_local_negatives)]
        if with_negatives and p.negative_batches == "separate":  # positives' BatchNorm sees positives only
            student_full = torch.cat([self.student(full[:2], n), self.student(full[2:], n)])
            student_small = torch.cat([self.student(small[: p.n_local], n), self.student(small[p.n_local :], n)])
        else:
            student_full, student_small = self.student(full, n), self.student(small, n)
        student_pos = torch.cat([student_full[:2], student_small[: p.n_local]])
        loss = loss_pos = distillation_loss(student_pos, teacher, self.centre, p.student_temp, self.teacher_temp)
        terms = {"loss_pos": loss_pos.detach()}
        if with_negatives:
            loss_neg = uniformity_loss(torch.cat([student_full[2:], student_small[p.n_local :]]), p.student_temp)
            loss = loss + p.negative_weight * loss_neg
            terms["loss_neg"] = loss_neg.detach()
        terms["teacher_temp"] = torch.tensor(self.teacher_temp)
        terms["teacher_entropy"], terms["teacher_mean_entropy"] = entropies(teacher - self.centre, self.teacher_temp)
        if self.training:
            batch_mean = distributed.mean(teacher.mean(dim=(0, 1)))  # over the global batch (DINO's all-reduce)
            self.centre.mul_(p.centre_momentum).add_(batch_mean, alpha=1.0 - p.centre_momentum)
        return {"loss": loss, **terms}
