"""IGD, the interpolated Gaussian descriptor (Chen et al., "Deep one-class classification via
interpolated Gaussian descriptor", AAAI 2022), as a detector on top of the medad encoder — the way
CCD (eqs. 5-6) and PMSACL (eqs. 10-12) fine-tune their pre-trained encoder with it.

Per model (a *global* one on whole images, a *local* one on patches):

- encoder f_θ: a copy of the medad ResNetEncoder passed to ``fit`` (its weights are copied, it
  is never modified), fine-tuned; z = f_θ(x) is the pooled embedding;
- decoder g_φ: :class:`~medad.models.decoder.ConvDecoder` from z (transposed convolutions);
- reconstruction loss ℓ_rec = ρ‖x − x̃‖₁ + (1 − ρ)(1 − MS-SSIM(x, x̃)), x̃ = g_φ(z)
  (CCD eq. 6 / PMSACL eq. 11; the ν-mix of global and local MS-SSIM is realised by summing the
  two models' maps) — :func:`reconstruction_loss`, :func:`reconstruction_map`;
- ACAI regulariser (Berthelot et al. 2019): a critic d_ω sees g_φ(α z₁ + (1 − α) z₂), α ~ U[0, ½],
  and learns to predict α (and 0 on γ x + (1 − γ) x̃); the autoencoder minimises ‖d_ω(·)‖² of
  its interpolations — :func:`acai_interpolate`, :func:`acai_target`, :func:`acai_critic_loss`;
- Gaussian anomaly classifier h(z) = 1 − exp(−‖z − μ‖² / σ²) with μ = mean z over the training
  set and σ² = κ · mean ‖z − μ‖² (PMSACL eq. 12 and the text after it), minimised as a loss and
  re-estimated every ``refresh_every`` epochs — :func:`gaussian_anomaly`, :func:`estimate_gaussian`;
- score s = ξ ℓ_rec + (1 − ξ) h (CCD eq. 5; h as written here grows with the distance to μ,
  so it is the papers' 1 − h_ψ, h_ψ read as the normality likelihood) — :func:`igd_score`.

The anomaly map sums the global map and the local one; each is ξ · (per-pixel ℓ_rec) + (1 − ξ) h
with h of the whole image (global) or of every patch (local) spread over its pixels, and the local
patch maps averaged where patches overlap. The image score is the map's mean (or max).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import DetectorParams
from medad.detectors.patches import patch_positions, random_patches
from medad.detectors.reconstruction import ReconstructionDetector, ReconstructionParams
from medad.device_policy import policy_for
from medad.models.decoder import (
    ConvDecoder, backbone_from_spec, backbone_spec, copy_weights, default_spec, usable_backbone,
)
from medad.models.gan import Critic
from medad.ssim import ms_ssim, ms_ssim_map
from medad.train.core import divergence_hint, optimizer_step, run_epochs, shuffled_batches
from medad.train.networks import LoopCheckpoint

log = logging.getLogger("medad")

MIN_PATCH = 8


# -- pure functions ---------------------------------------------------------------------------


def gaussian_anomaly(z: Tensor, mu: Tensor, sigma2: Tensor | float) -> Tensor:
    """h(z) = 1 − exp(−‖z − μ‖² / σ²) per row of ``z`` ``[N, D]`` (PMSACL eq. 12): 0 at μ, → 1 far away.

    >>> float(gaussian_anomaly(torch.zeros(1, 2), torch.zeros(2), 1.0)[0])
    0.0
    """
    return 1 - torch.exp(-(z - mu).pow(2).sum(1) / sigma2)


def gaussian_from_moments(
    n: int, sum_z: Tensor, sum_sq: Tensor, kappa: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """(μ, σ²) from n, Σz and Σ‖z‖²: μ = Σz / n, σ² = κ (Σ‖z‖² / n − ‖μ‖²) (floored at ``eps``)."""
    mu = sum_z / n
    return mu, (kappa * (sum_sq / n - mu.pow(2).sum())).clamp_min(eps)


def estimate_gaussian(z: Tensor, kappa: float = 1.0) -> tuple[Tensor, Tensor]:
    """μ = mean of ``z`` ``[N, D]`` and σ² = κ · mean ‖z − μ‖² (PMSACL, after eq. 12).

    >>> mu, s2 = estimate_gaussian(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    >>> mu.tolist(), float(s2)
    ([1.0, 0.0], 1.0)
    """
    z = z.double()
    mu, s2 = gaussian_from_moments(len(z), z.sum(0), z.pow(2).sum(), kappa)
    return mu.float(), s2.float()


def acai_interpolate(z: Tensor, alpha: Tensor) -> Tensor:
    """Latent mixtures α zᵢ + (1 − α) z_{N−1−i} of every code with the batch's reversed order
    (ACAI, Berthelot et al. 2019, eq. 1); ``alpha`` is ``[N, 1]`` (or broadcastable)."""
    return alpha * z + (1 - alpha) * z.flip(0)


def acai_target(alpha: Tensor) -> Tensor:
    """What the critic must predict for a mixture with coefficient α: min(α, 1 − α) — the
    distance to the nearest end point, since α and 1 − α give the same mixture up to the order
    of the pair (α is drawn from [0, ½], where this is α itself).

    >>> acai_target(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])).tolist()
    [0.0, 0.25, 0.5, 0.25, 0.0]
    """
    return torch.minimum(alpha, 1 - alpha)


def acai_critic_loss(pred_mix: Tensor, alpha: Tensor, pred_real: Tensor) -> Tensor:
    """Critic loss ‖d(x̂_α) − α‖² + ‖d(γ x + (1 − γ) x̃)‖² (ACAI eq. 2), means over the batch."""
    return (pred_mix - acai_target(alpha)).pow(2).mean() + pred_real.pow(2).mean()


def reconstruction_loss(x: Tensor, rec: Tensor, rho: float) -> Tensor:
    """ℓ_rec = ρ mean|x − x̃| + (1 − ρ)(1 − MS-SSIM(x, x̃)) per image ``[N]`` (CCD eq. 6)."""
    return rho * (x - rec).abs().flatten(1).mean(1) + (1 - rho) * (1 - ms_ssim(x, rec))


def reconstruction_map(x: Tensor, rec: Tensor, rho: float) -> Tensor:
    """Per-pixel ℓ_rec ``[N, H, W]``: ρ|x − x̃| (mean over channels) + (1 − ρ)(1 − MS-SSIM map)."""
    return rho * (x - rec).abs().mean(1) + (1 - rho) * (1 - ms_ssim_map(x, rec))


def igd_score(rec: Tensor, h: Tensor, xi: float) -> Tensor:
    """s = ξ ℓ_rec + (1 − ξ) h (CCD eq. 5 with h the anomaly form of the classifier)."""
    return xi * rec + (1 - xi) * h


# -- networks ---------------------------------------------------------------------------------


class IGDModel(nn.Module):
    """Encoder f_θ (ResNetEncoder from ``spec``), decoder g_φ, ACAI critic and the Gaussian (μ, σ²)."""

    def __init__(self, spec: Tensor, channels: int, size: int, decoder_width: int, critic_width: int):
        super().__init__()
        self.encoder = backbone_from_spec(spec)
        self.decoder = ConvDecoder(self.encoder.out_dim, channels, size, decoder_width)
        self.critic = Critic(channels, size, critic_width)
        self.register_buffer("mu", torch.zeros(self.encoder.out_dim))
        self.register_buffer("sigma2", torch.ones(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


# -- detector ---------------------------------------------------------------------------------


class IGDParams(ReconstructionParams):
    epochs: int = Field(30, ge=1, description="training epochs (global and local models together)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of encoders, decoders and critics")
    batch_size: int = Field(
        32, ge=2, description="images per step (the local model sees patches_per_image × as many patches)")
    xi: float = Field(0.5, ge=0, le=1, description="ξ: weight of ℓ_rec in the score (1 − ξ on h)")
    rho: float = Field(0.15, ge=0, le=1, description="ρ: L1 weight in ℓ_rec (1 − ρ on 1 − MS-SSIM)")
    lambda_h: float = Field(1.0, ge=0, description="weight of the Gaussian classifier loss mean h(z)")
    lambda_reg: float = Field(0.1, ge=0, description="weight of the ACAI interpolation regulariser")
    gamma: float = Field(0.2, ge=0, le=1, description="γ of the critic's real/reconstruction mixture")
    kappa: float = Field(1.0, gt=0, le=1, description="κ in σ² = κ · mean ‖z − μ‖²")
    refresh_every: int = Field(5, ge=1, description="re-estimate μ, σ² every this many epochs (and after training)")
    local: bool = Field(True, description="also train the local (patch) model and add its map")
    patch_size: int = Field(32, ge=MIN_PATCH, description="local patch side; min(patch_size, image side // 2)")
    patches_per_image: int = Field(4, ge=1, description="random patches per image per local training step")
    decoder_width: int = Field(32, ge=1, description="channels of the decoder's last hidden layer")
    critic_width: int = Field(16, ge=1, description="channels of the ACAI critic's first layer")
    width: int = Field(16, ge=1, description="width of a fresh ResNetEncoder when fit has no usable medad one")


class IGDDetector(ReconstructionDetector):
    """IGD with global and local models (see the module docstring); ``spatial`` maps."""

    name: ClassVar[str] = "igd"
    Params: ClassVar[type[DetectorParams]] = IGDParams
    params: IGDParams
    statistics: ClassVar[tuple[str, ...]] = ("input_shape", "backbone_spec")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.register_buffer("backbone_spec", torch.empty(0, dtype=torch.long))

    @property
    def uses_encoder(self) -> bool:
        """IGD fine-tunes a copy of the pre-trained encoder (CCD eqs. 5-6, PMSACL eqs. 10-12)."""
        return True

    # -- construction / persistence -----------------------------------------------------------
    def local_patch(self, size: int) -> int:
        """Side of the local model's patches for ``size`` px images (0: no local model)."""
        patch = min(self.params.patch_size, size // 2)
        return patch if self.params.local and patch >= MIN_PATCH else 0

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> IGDDetector:
        """Copy the medad ``encoder`` into the global and local models and train them on ``images``."""
        backbone = usable_backbone(encoder, images.shape[1], self.name)
        spec = backbone_spec(backbone) if backbone is not None else default_spec(
            images.shape[1], images.shape[-1], self.params.width)
        self.backbone_spec = spec.to(self.device)
        super().fit(images, encoder, cache, unlabeled=unlabeled)
        return self

    def build(self, channels: int, size: int) -> None:
        p = self.params
        spec = self.backbone_spec if self.backbone_spec.numel() else default_spec(channels, size, p.width)
        self.global_model = IGDModel(spec, channels, size, p.decoder_width, p.critic_width)
        patch = self.local_patch(size)
        self.local_model = IGDModel(spec, channels, patch, p.decoder_width, p.critic_width) if patch else None

    def _models(self) -> list[tuple[IGDModel, int]]:
        """(model, patch side; 0 = whole image)."""
        size = int(self.input_shape[1])
        models = [(self.global_model, 0)]
        if self.local_model is not None:
            models.append((self.local_model, self.local_patch(size)))
        return models

    # -- training -----------------------------------------------------------------------------
    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        p = self.params
        if len(images) < 2:
            raise ValueError(f"training {self.name} needs at least 2 images, got {len(images)}")
        backbone = usable_backbone(encoder, images.shape[1], self.name, warn=False)
        models = self._models()
        optimizers = []
        for model, _ in models:
            if backbone is not None:
                copy_weights(model.encoder, backbone)
            model.requires_grad_(True)
            ae = [*model.encoder.parameters(), *model.decoder.parameters()]
            optimizers.append((torch.optim.Adam(ae, lr=p.lr), torch.optim.Adam(model.critic.parameters(), lr=p.lr)))
        generator = torch.Generator().manual_seed(p.seed)
        parts: dict[str, nn.Module | torch.optim.Optimizer] = {}
        for i, ((model, _), (opt_ae, opt_critic)) in enumerate(zip(models, optimizers)):
            parts.update({f"model{i}": model, f"ae_optimizer{i}": opt_ae, f"critic_optimizer{i}": opt_critic})
        checkpoint = LoopCheckpoint("igd", p.epochs, parts, generator)  # resumes an interrupted fit

        def refresh(epoch: int) -> None:
            if (epoch - 1) % p.refresh_every == 0:
                self._refresh(images)
            for model, _ in models:
                model.train()

        # fp32 whatever the policy (the adversarial balance is not measured in bf16); only its host reads
        check = policy_for(self.device).eager_checks

        def step(idx: Tensor, epoch: int, done: float) -> dict[str, Tensor]:
            x = images[idx].to(self.device)
            losses = {}
            for i, ((model, patch), (opt_ae, opt_critic)) in enumerate(zip(models, optimizers)):
                batch = x if patch == 0 else random_patches(x, patch, p.patches_per_image, generator)
                losses["loss" if i == 0 else f"loss_model{i}"] = self._step(model, opt_ae, opt_critic, batch,
                                                                             generator, epoch, check)
            return losses

        def saved(record: dict) -> None:
            checkpoint.save(epoch=record["epoch"])
            log.debug("igd epoch %d/%d losses %s", record["epoch"], p.epochs,
                      {k: round(v, 5) for k, v in record.items() if k.startswith("loss")})

        run_epochs(step, lambda epoch: shuffled_batches(len(images), p.batch_size, generator), epochs=p.epochs,
                   start=checkpoint.restore()["epoch"], name="igd", before_epoch=refresh, checkpoint=saved,
                   live=check, error="igd: loss became {loss} at epoch {epoch}; "
                   + divergence_hint("the detector's params.lr", p.lr))
        self._refresh(images)

    def _step(self, model: IGDModel, opt_ae: torch.optim.Optimizer, opt_critic: torch.optim.Optimizer,
              x: Tensor, generator: torch.Generator, epoch: int, check: bool) -> Tensor:
        """One autoencoder step (ℓ_rec + λ_h h + λ_reg ACAI) and one critic step; returns the AE loss
        (``check``: see :func:`~medad.train.core.optimizer_step`)."""
        p = self.params
        z, rec = model(x)
        alpha = 0.5 * torch.rand(len(x), 1, generator=generator).to(x)
        mixed = model.decoder(acai_interpolate(z, alpha))
        loss = (reconstruction_loss(x, rec, p.rho).mean()
                + p.lambda_h * gaussian_anomaly(z, model.mu, model.sigma2).mean()
                + p.lambda_reg * model.critic(mixed).pow(2).mean())
        hint = divergence_hint("the detector's params.lr", p.lr)
        value = optimizer_step(loss, opt_ae, f"igd: loss became {{loss}} at epoch {{epoch}}; {hint}", epoch,
                               check=check)
        critic_loss = acai_critic_loss(
            model.critic(mixed.detach()), alpha[:, 0], model.critic(p.gamma * x + (1 - p.gamma) * rec.detach())
        )
        optimizer_step(critic_loss, opt_critic, f"igd critic: loss became {{loss}} at epoch {{epoch}}; {hint}", epoch,
                       check=check)
        return value

    @torch.no_grad()
    def _refresh(self, images: Tensor) -> None:
        """Re-estimate μ, σ² of every model on the training images (all local grid patches)."""
        p = self.params
        for model, patch in self._models():
            model.eval()
            n, sum_z, sum_sq = 0, 0.0, 0.0
            for batch in images.split(p.batch_size):
                for crops in self._grid_chunks(batch.to(self.device), patch):
                    z = model.encoder(crops[1]).double()
                    n, sum_z, sum_sq = n + len(z), sum_z + z.sum(0), sum_sq + z.pow(2).sum()
            mu, sigma2 = gaussian_from_moments(n, sum_z, sum_sq, p.kappa)
            model.mu.copy_(mu)
            model.sigma2.copy_(sigma2)

    def _grid_chunks(self, x: Tensor, patch: int):
        """Yield (offsets, crops ``[len(offsets) · B, C, p, p]``, offset-major) over the stride-p/2
        grid of patches, about ``batch_size × 4`` crops at a time; the whole image when patch = 0."""
        if patch == 0:
            yield [(0, 0)], x
            return
        side = patch_positions(x.shape[-1], patch, max(patch // 2, 1))
        grid = [(i, j) for i in side for j in side]
        per_chunk = max(1, (4 * self.params.batch_size) // len(x))
        for start in range(0, len(grid), per_chunk):
            offsets = grid[start : start + per_chunk]
            yield offsets, torch.cat([x[:, :, i : i + patch, j : j + patch] for i, j in offsets])

    # -- scoring ------------------------------------------------------------------------------
    def model_map(self, model: IGDModel, x: Tensor) -> Tensor:
        """ξ · per-pixel ℓ_rec + (1 − ξ) · h(f_θ(x)) spread over the pixels ``[B, H, W]``."""
        z, rec = model(x)
        h = gaussian_anomaly(z, model.mu, model.sigma2)
        return igd_score(reconstruction_map(x, rec, self.params.rho), h[:, None, None], self.params.xi)

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Global map + local map (overlapping patch maps averaged)."""
        out = self.model_map(self.global_model, x)
        if self.local_model is not None:
            patch = self.local_patch(x.shape[-1])
            local = torch.zeros_like(out)
            count = torch.zeros_like(out[0])
            for offsets, crops in self._grid_chunks(x, patch):
                maps = self.model_map(self.local_model, crops).view(len(offsets), len(x), patch, patch)
                for (i, j), m in zip(offsets, maps):
                    local[:, i : i + patch, j : j + patch] += m
                    count[i : i + patch, j : j + patch] += 1
            out = out + local / count
        return out
