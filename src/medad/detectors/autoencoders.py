"""Autoencoder detectors: ``ae``, ``memae``, ``ae_u`` and ``msssim_ae``.

All four train :class:`medad.models.autoencoder.ConvAutoEncoder` (the DDAD / MedIAnomaly
network, DDAD §4.2) on the normal images with :func:`medad.train.networks.train_network` and
score an image by the mean (or max, ``reduction``) of a pixel anomaly map. They share
:class:`AutoEncoderDetector`; a variant only says which network it builds, its training loss and
its map. The losses and maps are small pure functions below, so they can be tested on
hand-made tensors.

=============  ==========================================  =========================================
detector       training loss                               pixel anomaly map
=============  ==========================================  =========================================
``ae``         MSE                                         (x − x̂)², mean over channels
``memae``      MSE + α · entropy(ŵ)  (Gong et al. eq. 10)  (x − x̂)²
``ae_u``       (x − x̂)²/σ² + log σ²  (DDAD eq. 5)          (x − x̂)²/σ²  (uncertainty-refined A_rec)
``msssim_ae``  ρ·|x − x̂| + (1 − ρ)(1 − MS-SSIM)           global + local (patch) 1 − MS-SSIM maps
=============  ==========================================  =========================================

AE-U's σ² is exp(log σ²) + ``min_variance`` (a floor, see :func:`variance`); ρ of ``msssim_ae``
is ``l1_weight`` (0.16). docs/detectors/autoencoders.md gives the choices and their reasons.

Shapes: images ``[N, C, S, S]`` with S a multiple of 16 (the network halves the side four times).

>>> import torch
>>> x = torch.full((1, 1, 2, 2), 0.5)
>>> squared_error_map(x, x + 0.1).tolist()  # doctest: +ELLIPSIS
[[[0.0100..., 0.0100...], [0.0100..., 0.0100...]]]
>>> float(attention_entropy(torch.tensor([[0.0, 1.0, 0.0]])))
0.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.patches import assemble_patches, extract_patches, random_patches
from medad.detectors.reconstruction import ReconstructionDetector, ReconstructionParams
from medad.models.autoencoder import AEOutput, ConvAutoEncoder
from medad.ssim import ms_ssim, ms_ssim_map
from medad.train.networks import train_network

log = logging.getLogger("medad")

# --------------------------------------------------------------------------------------------
# pure loss and map functions
# --------------------------------------------------------------------------------------------


def squared_error_map(x: Tensor, reconstruction: Tensor) -> Tensor:
    """A_rec = (x − x̂)² per pixel (DDAD §3.3), averaged over channels: ``[B, H, W]``."""
    return (x - reconstruction).pow(2).mean(1)


def attention_entropy(weights: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over the batch of the entropy −Σ_i ŵ_i log ŵ_i of MemAE's attention ``[B, items]``
    (Gong et al. 2019, eq. 9). ``eps`` keeps the log and its gradient finite where hard shrinkage
    set ŵ_i = 0 (those terms contribute 0, so a one-hot attention has zero entropy)."""
    return (-weights * torch.log(weights + eps)).sum(1).mean()


def memae_loss(x: Tensor, out: AEOutput, entropy_weight: float) -> Tensor:
    """MSE + α · entropy of the attention weights (Gong et al. 2019, eq. 10)."""
    loss = F.mse_loss(out.reconstruction, x)
    if out.attention is not None and entropy_weight > 0:
        loss = loss + entropy_weight * attention_entropy(out.attention)
    return loss


def variance(log_var: Tensor, min_variance: float) -> Tensor:
    """σ² = exp(log σ²) + ``min_variance``: the floor bounds the AE-U loss from below and the
    normalised map from above (a perfectly reconstructed pixel would otherwise drive σ² → 0)."""
    return torch.exp(log_var) + min_variance


def aeu_loss(x: Tensor, reconstruction: Tensor, log_var: Tensor, min_variance: float = 0.0) -> Tensor:
    """AE-U loss, DDAD eq. 5 (Mao et al. 2020): mean over images and pixels of
    (x − x̂)²/σ² + log σ². For a fixed error e² its minimum over σ² is at σ² = e² (derivative
    −e²/σ⁴ + 1/σ² = 0), i.e. at log_var = log(e² − ``min_variance``) with the floor."""
    var = variance(log_var, min_variance)
    return ((x - reconstruction).pow(2) / var + torch.log(var)).mean()


def normalized_error_map(x: Tensor, reconstruction: Tensor, log_var: Tensor, min_variance: float) -> Tensor:
    """AE-U's uncertainty-refined A_rec: (x − x̂)²/σ² per pixel (DDAD §3.4), mean over channels."""
    return ((x - reconstruction).pow(2) / variance(log_var, min_variance)).mean(1)


def msssim_loss(x: Tensor, reconstruction: Tensor, l1_weight: float) -> Tensor:
    """ρ · mean|x − x̂| + (1 − ρ)(1 − MS-SSIM(x, x̂)), the reconstruction loss of CCD eq. 6 with a
    single (global or local) MS-SSIM term; ρ = 0 is the pure MS-SSIM loss of the MS-SSIM AE."""
    loss = 1 - ms_ssim(x, reconstruction).mean()
    if l1_weight > 0:
        loss = (1 - l1_weight) * loss + l1_weight * (x - reconstruction).abs().mean()
    return loss


def msssim_error_map(x: Tensor, reconstruction: Tensor) -> Tensor:
    """1 − per-pixel MS-SSIM ``[B, H, W]`` (CCD §2.2, s_MSI at image regions)."""
    return 1 - ms_ssim_map(x, reconstruction)


# --------------------------------------------------------------------------------------------
# size of the local model's patches (tiling: medad.detectors.patches)
# --------------------------------------------------------------------------------------------


def local_patch_size(size: int, patch_size: int) -> int | None:
    """Side of the local model's patches for ``size``-px images: ``patch_size`` when the image
    holds at least 2 patches per side, else ``size // 2`` rounded down to a multiple of 16 (the
    network's constraint); ``None`` (global model only) when that leaves less than 16 px.

    >>> local_patch_size(256, 32), local_patch_size(64, 32), local_patch_size(32, 32), local_patch_size(16, 32)
    (32, 32, 16, None)
    """
    patch = patch_size if size >= 2 * patch_size else size // 2
    patch -= patch % 16
    return patch if patch >= 16 else None


# --------------------------------------------------------------------------------------------
# detectors
# --------------------------------------------------------------------------------------------


class AutoEncoderParams(ReconstructionParams):
    latent: int = Field(16, ge=1, description="size of the latent code (the middle fully connected layer)")
    hidden: int = Field(1024, ge=1, description="width of the fully connected layers around the latent code")
    linear_latent: bool = Field(False, description="latent layer without BatchNorm + ReLU (the DDAD authors' code)")


class AutoEncoderDetector(ReconstructionDetector):
    """One ConvAutoEncoder ``net``; variants override ``network_options``, ``loss`` and
    ``pixel_map`` (the plain ``ae``: MSE and the squared error)."""

    name: ClassVar[str] = "ae"
    Params: ClassVar[type[AutoEncoderParams]] = AutoEncoderParams
    params: AutoEncoderParams

    def network_options(self) -> dict[str, Any]:
        """Extra ``ConvAutoEncoder`` arguments of the variant."""
        return {}

    def make_network(self, channels: int, size: int) -> ConvAutoEncoder:
        p = self.params
        return ConvAutoEncoder(channels, size, latent=p.latent, hidden=p.hidden, linear_latent=p.linear_latent,
                               **self.network_options())

    def loss(self, x: Tensor, out: AEOutput) -> Tensor:
        return F.mse_loss(out.reconstruction, x)

    def pixel_map(self, x: Tensor, out: AEOutput) -> Tensor:
        return squared_error_map(x, out.reconstruction)

    def build(self, channels: int, size: int) -> None:
        self.net = self.make_network(channels, size)

    def _train(
        self, net: nn.Module, images: Tensor, loss_fn: Callable[[Tensor], Tensor], seed_offset: int = 0, name: str = ""
    ) -> None:
        p = self.params
        train_network(net, images, loss_fn, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                      seed=p.seed + seed_offset, name=name or self.name)

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        self._train(self.net, images, lambda b: self.loss(b, self.net(b)))

    def anomaly_map(self, x: Tensor) -> Tensor:
        return self.pixel_map(x, self.net(x))


class MemAEParams(AutoEncoderParams):
    memory: int = Field(100, ge=1, description="number of memory items")
    shrink: float | None = Field(None, ge=0, description="hard-shrinkage threshold λ; None = 1/memory")
    entropy_weight: float = Field(0.0002, ge=0, description="α, weight of the attention entropy loss")


class MemAEDetector(AutoEncoderDetector):
    """MemAE (Gong et al. 2019) on the DDAD autoencoder: the latent code is read from a memory."""

    name: ClassVar[str] = "memae"
    Params: ClassVar[type[MemAEParams]] = MemAEParams
    params: MemAEParams

    def network_options(self) -> dict[str, Any]:
        return {"memory": self.params.memory, "shrink": self.params.shrink}

    def loss(self, x: Tensor, out: AEOutput) -> Tensor:
        return memae_loss(x, out, self.params.entropy_weight)


class AEUParams(AutoEncoderParams):
    min_variance: float = Field(1e-3, ge=0, description="floor added to σ² = exp(log σ²) in the loss and the map")
    score_map: Literal["normalized", "squared"] = Field(
        "normalized", description="anomaly map: (x − x̂)²/σ² (AE-U, DDAD §3.4) or the plain squared error"
    )


class AEUDetector(AutoEncoderDetector):
    """AE-U (Mao et al. 2020): the decoder also predicts log σ² per pixel; trained with DDAD eq. 5,
    scored with the reconstruction error normalised by the predicted variance."""

    name: ClassVar[str] = "ae_u"
    Params: ClassVar[type[AEUParams]] = AEUParams
    params: AEUParams

    def network_options(self) -> dict[str, Any]:
        return {"uncertainty": True}

    def loss(self, x: Tensor, out: AEOutput) -> Tensor:
        return aeu_loss(x, out.reconstruction, out.log_var, self.params.min_variance)

    def pixel_map(self, x: Tensor, out: AEOutput) -> Tensor:
        if self.params.score_map == "squared":
            return squared_error_map(x, out.reconstruction)
        return normalized_error_map(x, out.reconstruction, out.log_var, self.params.min_variance)


class MSSSIMParams(AutoEncoderParams):
    l1_weight: float = Field(0.16, ge=0, le=1, description="ρ: weight of the L1 term blended with 1 − MS-SSIM")
    patch_size: int = Field(32, ge=16, description="side of the local model's patches (see local_patch_size)")
    patch_stride: int | None = Field(None, ge=1, description="stride of the scoring patches; None = patch/2")
    patches_per_image: int = Field(4, ge=1, description="random training crops per image and step (local model)")


class MSSSIMAEDetector(AutoEncoderDetector):
    """MS-SSIM autoencoder with a global model on whole images (``net``) and a local model on
    patches (``local``), as CCD uses it downstream (CCD §2.2 and §3.2): the anomaly map is the sum
    of the global map and the local map assembled from overlapping patches."""

    name: ClassVar[str] = "msssim_ae"
    Params: ClassVar[type[MSSSIMParams]] = MSSSIMParams
    params: MSSSIMParams

    def loss(self, x: Tensor, out: AEOutput) -> Tensor:
        return msssim_loss(x, out.reconstruction, self.params.l1_weight)

    def pixel_map(self, x: Tensor, out: AEOutput) -> Tensor:
        return msssim_error_map(x, out.reconstruction)

    @property
    def patch(self) -> int | None:
        return local_patch_size(int(self.input_shape[1]), self.params.patch_size)

    @property
    def stride(self) -> int:
        return self.params.patch_stride or max(1, (self.patch or 2) // 2)

    def build(self, channels: int, size: int) -> None:
        super().build(channels, size)
        patch = local_patch_size(size, self.params.patch_size)
        if patch is None:
            log.warning("msssim_ae: %d-px images are too small for a local model; using the global one only", size)
        self.local = self.make_network(channels, patch) if patch is not None else None

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        super().train_networks(images, encoder, unlabeled)
        if self.local is None:
            return
        patch, k = self.patch, self.params.patches_per_image
        crops = torch.Generator().manual_seed(self.params.seed)

        def local_loss(batch: Tensor) -> Tensor:
            patches = random_patches(batch, patch, k, crops)
            return self.loss(patches, self.local(patches))

        self._train(self.local, images, local_loss, seed_offset=1, name="msssim_ae local")

    def local_map(self, x: Tensor) -> Tensor:
        """1 − MS-SSIM of every patch (stride ``stride``), averaged where patches overlap: ``[B, S, S]``."""
        patches = extract_patches(x, self.patch, self.stride)
        maps = torch.cat([self.pixel_map(p, self.local(p)) for p in patches.split(max(self.params.batch_size, 256))])
        return assemble_patches(maps, x.shape[-1], self.stride)

    def anomaly_map(self, x: Tensor) -> Tensor:
        global_map = super().anomaly_map(x)
        return global_map if self.local is None else global_map + self.local_map(x)
