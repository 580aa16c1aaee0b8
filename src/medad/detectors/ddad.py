"""DDAD: dual-distribution discrepancy with self-supervised refinement (Cai et al., DDAD-ASR).

Two ensembles of K reconstruction networks (``ConvAutoEncoder``; AE or AE-U backbone), each
member with its own initialisation and data order:

- **NDM** trains on the normal images only (DDAD eq. 1), **UDM** on normal + unlabeled images
  (eq. 2; only when an unlabeled pool is used).
- **A_intra** (eq. 3 / 6): per-pixel standard deviation of the NDM reconstructions;
  **A_inter** (eq. 4 / 7): |mean NDM reconstruction − mean UDM reconstruction|; with the AE-U
  backbone both are divided by the NDM's mean predicted σ.
- **ASR-Net** F (``medad.models.asr_net``) refines them: R_dual = σ(F([A_intra, A_inter])) (eq. 8),
  R_intra = σ(F(A_intra)) (eq. 13), trained with the focal loss (eqs. 11-12) on foreign-patch
  interpolation anomalies (``medad.augment.fpi``, eqs. 9-10) of the normal images.

The map is R_dual with a pool and R_intra without one (``variant``); ``refine=False`` reports the
raw A_inter (dual) or A_intra (intra) instead. ``refine="auto"`` (the default) trains the ASR-Net
only if the raw maps localise FPI anomalies of the training normals (pixel AUROC ≥
``RAW_SIGNAL_FLOOR``): below it the net learns the patch prior and inverts the raw score
(docs/detectors/ddad.md). The image score is the mean of the map.

>>> import torch
>>> recs = torch.stack([torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)])  # K=2 members
>>> intra_discrepancy(recs)[0, 0, 0].item(), inter_discrepancy(recs, recs + 1)[0, 0, 0].item()
(0.5, 1.0)
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medad.augment.fpi import foreign_patch_interpolation
from medad.detectors.autoencoders import AutoEncoderParams, aeu_loss, variance
from medad.detectors.reconstruction import ReconstructionDetector
from medad.evaluation.metrics import pixel_auroc
from medad.models.asr_net import ASRNet
from medad.models.autoencoder import ConvAutoEncoder
from medad.train.networks import train_network

log = logging.getLogger("medad")

SIGMA_FLOOR = 1e-6
RAW_SIGNAL_FLOOR = 0.6  # raw-map FPI pixel AUROC below which refine="auto" skips the ASR-Net
FPI_CHECK_IMAGES = 512  # normals the FPI check (refine="auto", diagnostics) reads at most


# -- pure math ----------------------------------------------------------------------------------
def intra_discrepancy(recs: Tensor, sigma: Tensor | None = None) -> Tensor:
    """A_intra ``[B, H, W]`` from NDM reconstructions ``recs [K, B, C, H, W]``.

    DDAD eq. 3: population standard deviation over the K members, per pixel; eq. 6 divides it by
    ``sigma [B, C, H, W]`` (the NDM's mean predicted σ, AE-U backbone). Channels are averaged.
    """
    a = recs.std(0, correction=0)
    if sigma is not None:
        a = a / sigma.clamp_min(SIGMA_FLOOR)
    return a.mean(1)


def inter_discrepancy(recs_ndm: Tensor, recs_udm: Tensor, sigma: Tensor | None = None) -> Tensor:
    """A_inter ``[B, H, W]``: |μ_A − μ_B| of the two ensembles' mean reconstructions (DDAD eq. 4),
    divided by ``sigma`` for the AE-U backbone (eq. 7); channels are averaged."""
    a = (recs_ndm.mean(0) - recs_udm.mean(0)).abs()
    if sigma is not None:
        a = a / sigma.clamp_min(SIGMA_FLOOR)
    return a.mean(1)


def ensemble_sigma(log_vars: Tensor, min_variance: float = 0.0) -> Tensor:
    """σ_p of DDAD eqs. 6-7: the mean over the K NDM members of σ = √(exp(log σ²) + ``min_variance``)
    (the variance floor of :func:`medad.detectors.autoencoders.variance`), ``[B, C, H, W]``."""
    return variance(log_vars, min_variance).sqrt().mean(0)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean pixel focal loss −(1 − p_t)^γ log p_t (DDAD eq. 12, Lin et al. 2017) of sigmoid
    ``logits`` against a {0, 1} ``target``; γ = 0 is the binary cross-entropy."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t).pow(gamma) * bce).mean()


# -- detector -----------------------------------------------------------------------------------
class DDADParams(AutoEncoderParams):
    """The autoencoder's ``latent``, ``hidden`` and ``linear_latent`` as for the ``ae`` family."""

    ensemble: int = Field(3, ge=2, description="K, networks per module (NDM and UDM)")
    backbone: Literal["ae", "ae_u"] = Field("ae_u", description="reconstruction network: AE (MSE) or AE-U")
    min_variance: float = Field(1e-3, ge=0, description="AE-U floor added to σ² (as the ae_u detector)")
    variant: Literal["auto", "dual", "intra"] = Field(
        "auto",
        description="dual = A_intra + A_inter (needs a pool), intra = A_intra only, auto = dual iff a pool is given",
    )
    refine: bool | Literal["auto"] = Field(
        "auto",
        description="refine the raw maps with the ASR-Net (R_dual / R_intra); auto = only if the raw maps "
        f"localise FPI anomalies of the training normals (pixel AUROC >= {RAW_SIGNAL_FLOOR})",
    )
    asr_epochs: int = Field(100, ge=1, description="ASR-Net training epochs")
    asr_lr: float = Field(1e-4, gt=0, description="ASR-Net Adam learning rate")
    asr_weight_decay: float = Field(1e-4, ge=0, description="ASR-Net weight decay")
    asr_width: int = Field(64, ge=1, description="ASR-Net hidden channels")
    focal_gamma: float = Field(2.0, ge=0, description="focusing parameter γ of the focal loss")


class DDADDetector(ReconstructionDetector):
    """NDM (+ UDM) ensembles of autoencoders and the ASR-Net; see the module docstring."""

    name = "ddad"
    Params = DDADParams
    params: DDADParams
    statistics = ("input_shape", "dual", "refined")

    def __init__(self, **params: Any):
        super().__init__(**params)
        # whether the fitted model uses a pool (UDM + two-input ASR-Net) and the ASR-Net: needed to
        # rebuild on load (models saved before ``refined`` existed used it iff refine was true)
        self.register_buffer("dual", torch.tensor(False))
        self.register_buffer("refined", torch.tensor(self.params.refine is not False))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        # models saved before ``refined`` existed used the ASR-Net iff ``refine`` was true
        state_dict.setdefault(prefix + "refined", torch.tensor(self.params.refine is not False))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- variant / build ------------------------------------------------------------------------
    def resolve_variant(self, unlabeled: Tensor | None) -> Literal["dual", "intra"]:
        has_pool = unlabeled is not None and len(unlabeled) > 0
        wanted = self.params.variant
        if wanted == "intra":
            return "intra"
        if not has_pool:
            if wanted == "dual":
                log.warning("ddad: variant 'dual' needs an unlabeled pool (data.unlabeled); falling back to R_intra")
            return "intra"
        return "dual"

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> DDADDetector:
        variant = self.resolve_variant(unlabeled)
        self.dual.fill_(variant == "dual")
        self.refined.fill_(self.params.refine is not False)
        log.info("ddad: %s variant, K=%d, backbone %s, refine %s", variant, self.params.ensemble,
                 self.params.backbone, self.params.refine)
        super().fit(images, encoder, cache, unlabeled=unlabeled if variant == "dual" else None)
        log.info("ddad: the map is %s", self.map_name)
        return self

    @property
    def map_name(self) -> str:
        """R_dual / R_intra (ASR-Net) or the raw A_inter / A_intra the map reports."""
        if bool(self.refined):
            return "R_dual" if bool(self.dual) else "R_intra"
        return "A_inter" if bool(self.dual) else "A_intra"

    def build(self, channels: int, size: int) -> None:
        p = self.params

        def member() -> ConvAutoEncoder:
            return ConvAutoEncoder(channels, size, latent=p.latent, hidden=p.hidden, linear_latent=p.linear_latent,
                                   uncertainty=p.backbone == "ae_u")

        dual = bool(self.dual)
        self.ndm = nn.ModuleList(member() for _ in range(p.ensemble))
        self.udm = nn.ModuleList(member() for _ in range(p.ensemble)) if dual else None
        self.asr = ASRNet(inputs=2 if dual else 1, width=p.asr_width) if bool(self.refined) else None

    # -- training ---------------------------------------------------------------------------------
    def _reconstruction_loss(self, net: ConvAutoEncoder):
        def loss(x: Tensor) -> Tensor:
            out = net(x)
            if out.log_var is not None:
                return aeu_loss(x, out.reconstruction, out.log_var, self.params.min_variance)
            return F.mse_loss(out.reconstruction, x)

        return loss

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        p = self.params
        common = {"epochs": p.epochs, "lr": p.lr, "batch_size": p.batch_size}
        for i, net in enumerate(self.ndm):
            train_network(net, images, self._reconstruction_loss(net), seed=p.seed + i, name=f"ddad NDM[{i}]", **common)
        if self.udm is not None:
            assert unlabeled is not None
            if unlabeled.shape[1:] != images.shape[1:]:
                raise ValueError(
                    f"unlabeled images {tuple(unlabeled.shape)} do not match the normals {tuple(images.shape)}"
                )
            both = torch.cat([images, unlabeled.to(images.dtype).cpu()])
            for i, net in enumerate(self.udm):
                train_network(net, both, self._reconstruction_loss(net), seed=p.seed + p.ensemble + i,
                              name=f"ddad UDM[{i}]", **common)
        if self.asr is not None and p.refine == "auto":
            for module in (*self.ndm, *(self.udm or ())):
                module.eval()
            raw = self.fpi_aurocs(images, seed=p.seed + 3 * p.ensemble)
            if max(raw.values()) < RAW_SIGNAL_FLOOR:
                log.warning(
                    "ddad: refine=auto: the raw maps hardly localise synthetic (FPI) anomalies of the training "
                    "normals (pixel AUROC %s < %.2f); the ASR-Net would learn the patch prior and invert the "
                    "raw score, so it is skipped and the raw map is reported (refine: true forces it)",
                    ", ".join(f"{k} {v:.3f}" for k, v in raw.items()), RAW_SIGNAL_FLOOR,
                )
                self.refined.fill_(False)
                self.asr = None
        if self.asr is not None:
            self._train_asr(images)

    def _train_asr(self, images: Tensor) -> None:
        """Stage 2: FPI anomalies of the normals → raw maps (frozen ensembles) → F, focal loss (eq. 11)."""
        p = self.params
        asr = self.asr
        assert asr is not None
        generator = torch.Generator().manual_seed(p.seed + 2 * p.ensemble)

        def loss(batch: Tensor) -> Tensor:
            with torch.no_grad():
                synthetic = foreign_patch_interpolation(batch, generator=generator)
                maps = self.raw_maps(synthetic.images)
            return focal_loss(asr(maps), synthetic.masks, p.focal_gamma)

        for module in (*self.ndm, *(self.udm or ())):
            module.eval()
        train_network(asr, images, loss, epochs=p.asr_epochs, lr=p.asr_lr, batch_size=p.batch_size,
                      seed=p.seed + 2 * p.ensemble, weight_decay=p.asr_weight_decay, name="ddad ASR-Net")

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def diagnostics(self, val_images: Tensor) -> dict[str, float]:
        """Do the maps localise synthetic anomalies? Pixel AUROC against the masks of FPI anomalies
        (eqs. 9-10) made from up to 512 validation normals: ``fpi_auroc_intra``, ``fpi_auroc_inter``
        (dual) and ``fpi_auroc_refined`` (ASR-Net). No abnormal image is used.

        The ASR-Net learns to map the raw maps to FPI masks; if the raw maps do not respond to the
        patches (AUROC near 0.5) it has nothing to learn from and its map is close to a constant
        (measured in docs/detectors/ddad.md), so a warning is logged.
        """
        if len(val_images) < 2:
            return {}
        out = self.fpi_aurocs(val_images, seed=self.params.seed + 1, refined=self.asr is not None)
        best_raw = max(v for k, v in out.items() if k != "fpi_auroc_refined")
        if self.asr is not None and best_raw < RAW_SIGNAL_FLOOR:
            log.warning(
                "ddad: the raw maps hardly localise synthetic (FPI) anomalies on validation normals "
                "(pixel AUROC %.3f < %.2f), so the ASR-Net had little to learn from; consider refine: false "
                "(see docs/detectors/ddad.md)", best_raw, RAW_SIGNAL_FLOOR,
            )
        return out

    @torch.no_grad()
    def fpi_aurocs(self, images: Tensor, seed: int, refined: bool = False) -> dict[str, float]:
        """Pixel AUROC of the raw maps (``fpi_auroc_intra``, ``fpi_auroc_inter`` when dual) and, with
        ``refined``, of the ASR-Net's map (``fpi_auroc_refined``) against the masks of FPI anomalies
        (eqs. 9-10) made from up to ``FPI_CHECK_IMAGES`` of ``images``, seeded by ``seed``."""
        synthetic = foreign_patch_interpolation(
            images[:FPI_CHECK_IMAGES].cpu(), generator=torch.Generator().manual_seed(seed)
        )
        masks = list(synthetic.masks.numpy())
        batches = synthetic.images.split(self.params.batch_size)
        raw = torch.cat([self.raw_maps(b.to(self.device)).float() for b in batches])
        names = ["intra", "inter"][: raw.shape[1]]
        out = {f"fpi_auroc_{n}": pixel_auroc(raw[:, i].cpu().numpy(), masks) for i, n in enumerate(names)}
        if refined:
            maps = torch.cat([self.map_from_raw(r) for r in raw.split(self.params.batch_size)])
            out["fpi_auroc_refined"] = pixel_auroc(maps.cpu().numpy(), masks)
        return out

    def raw_maps(self, x: Tensor) -> Tensor:
        """``[B, 2, H, W]`` = [A_intra, A_inter] (dual) or ``[B, 1, H, W]`` = A_intra (intra)."""
        outs = [net(x) for net in self.ndm]
        recs = torch.stack([o.reconstruction for o in outs])
        sigma = None
        if outs[0].log_var is not None:
            sigma = ensemble_sigma(torch.stack([o.log_var for o in outs]), self.params.min_variance)
        intra = intra_discrepancy(recs, sigma)
        if self.udm is None:
            return intra.unsqueeze(1)
        recs_udm = torch.stack([net(x).reconstruction for net in self.udm])
        return torch.stack([intra, inter_discrepancy(recs, recs_udm, sigma)], 1)

    def map_from_raw(self, maps: Tensor) -> Tensor:
        """The detector's map ``[B, H, W]`` from :meth:`raw_maps`: σ(F(maps)) (R_dual / R_intra), or
        the raw A_inter (dual) / A_intra (intra) without the ASR-Net."""
        if self.asr is None:
            return maps[:, -1]
        return torch.sigmoid(self.asr(maps))

    def anomaly_map(self, x: Tensor) -> Tensor:
        return self.map_from_raw(self.raw_maps(x))
