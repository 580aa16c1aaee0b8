"""f-AnoGAN (Schlegl et al., "f-AnoGAN: Fast unsupervised anomaly detection with generative
adversarial networks", Medical Image Analysis 2019), a downstream detector of CCD (eq. 7).

Two training phases on the normal images (networks in :mod:`medad.models.gan`):

1. a WGAN-GP (Gulrajani et al. 2017): generator G (z ~ N(0, I) → image) and critic D, the critic
   trained on E[D(G(z))] − E[D(x)] + λ E[(‖∇D(x̂)‖₂ − 1)²] and G on −E[D(G(z))] once every
   ``critic_iters`` critic steps — :func:`medad.models.gan.gradient_penalty`,
   :func:`~medad.models.gan.wgan_critic_loss`, :func:`~medad.models.gan.wgan_generator_loss`;
2. with G and D frozen, an encoder E trained with the izi_f loss
   (1/n)‖x − G(E(x))‖² + κ (1/n_f)‖f(x) − f(G(E(x)))‖², n pixels, f the critic's penultimate
   features of size n_f (f-AnoGAN, izi_f architecture) — :func:`izi_f_loss`.

E is either a copy of the medad ResNetEncoder given to ``fit`` with a linear head to the latent
space (``encoder_init="medad"``, the default: the pre-trained encoder is fine-tuned, as CCD does)
or the DCGAN-style :class:`~medad.models.gan.ConvEncoder` (``"scratch"``, the paper's, also used
when ``fit`` gets no medad ResNetEncoder for the images' channels).

Score A(x) = izi_f of x (f-AnoGAN's anomaly score; CCD eq. 7 with squared norms). Map: the
per-pixel residual (x − G(E(x)))² (mean over channels) plus κ times the feature residual spread
over the pixels, so that the map's mean is exactly A(x) — :func:`fanogan_map`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from medad.detectors.base import DetectorParams
from medad.detectors.reconstruction import ReconstructionDetector, ReconstructionParams
from medad.device_policy import policy_for
from medad.models.decoder import backbone_from_spec, backbone_spec, copy_weights, usable_backbone
from medad.models.gan import (
    ConvEncoder, Critic, Generator, LatentEncoder, gradient_penalty, wgan_critic_loss, wgan_generator_loss,
)
from medad.train.core import divergence_hint, optimizer_step, run_epochs, shuffled_batches
from medad.train.networks import LoopCheckpoint, train_network

log = logging.getLogger("medad")


def fanogan_map(x: Tensor, rec: Tensor, fx: Tensor, frec: Tensor, kappa: float) -> Tensor:
    """(x − x̂)² averaged over channels ``[N, H, W]`` + κ · mean over features of (f(x) − f(x̂))²,
    added to every pixel; its mean over the pixels is :func:`izi_f_loss`."""
    return (x - rec).pow(2).mean(1) + kappa * (fx - frec).pow(2).mean(1)[:, None, None]


def izi_f_loss(x: Tensor, rec: Tensor, fx: Tensor, frec: Tensor, kappa: float) -> Tensor:
    """izi_f per image ``[N]``: (1/n)‖x − x̂‖² + κ (1/n_f)‖f(x) − f(x̂)‖² (f-AnoGAN's encoder loss
    and anomaly score A(x) = A_R(x) + κ A_D(x)).

    >>> x = torch.zeros(1, 1, 2, 2); rec = torch.ones(1, 1, 2, 2)
    >>> izi_f_loss(x, rec, torch.zeros(1, 4), torch.full((1, 4), 2.0), kappa=0.5).tolist()
    [3.0]
    """
    return (x - rec).pow(2).flatten(1).mean(1) + kappa * (fx - frec).pow(2).mean(1)


class FAnoGANParams(ReconstructionParams):
    epochs: int = Field(30, ge=1, description="WGAN-GP training epochs")
    encoder_epochs: int | None = Field(None, ge=1, description="encoder (izi_f) epochs; None = epochs")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (GAN: betas 0, 0.9; encoder: default betas)")
    batch_size: int = Field(32, ge=2, description="mini-batch size for training and scoring")
    latent_dim: int = Field(64, ge=1, description="dimension of z ~ N(0, I)")
    width: int = Field(32, ge=1, description="channels of the DCGAN layers next to the image (G, D, scratch E)")
    critic_iters: int = Field(5, ge=1, description="critic steps per generator step")
    gp_weight: float = Field(10.0, ge=0, description="λ of the gradient penalty")
    kappa: float = Field(1.0, ge=0, description="κ: weight of the critic-feature residual in loss and score")
    encoder_init: Literal["medad", "scratch"] = Field(
        "medad", description="E = copy of the medad encoder + linear head, or a DCGAN encoder from scratch")


class FAnoGANDetector(ReconstructionDetector):
    """f-AnoGAN (WGAN-GP + izi_f encoder); ``spatial`` residual maps."""

    name: ClassVar[str] = "fanogan"
    Params: ClassVar[type[DetectorParams]] = FAnoGANParams
    params: FAnoGANParams
    statistics: ClassVar[tuple[str, ...]] = ("input_shape", "backbone_spec")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.register_buffer("backbone_spec", torch.empty(0, dtype=torch.long))

    @property
    def uses_encoder(self) -> bool:
        """With ``encoder_init: medad`` the izi_f encoder starts from the pre-trained encoder."""
        return self.params.encoder_init == "medad"

    def fit(
        self, images: Tensor, encoder: nn.Module | None, cache: dict | None = None, *, unlabeled: Tensor | None = None
    ) -> FAnoGANDetector:
        """Train the WGAN-GP, then the encoder (from the medad ``encoder``'s weights if asked)."""
        backbone = None
        if self.params.encoder_init == "medad":
            backbone = usable_backbone(encoder, images.shape[1], self.name)
            if backbone is None and encoder is None:
                log.info("fanogan: no medad encoder given; training a DCGAN encoder from scratch")
        spec = backbone_spec(backbone) if backbone is not None else torch.empty(0, dtype=torch.long)
        self.backbone_spec = spec.to(self.device)
        super().fit(images, encoder, cache, unlabeled=unlabeled)
        return self

    def build(self, channels: int, size: int) -> None:
        p = self.params
        self.generator = Generator(p.latent_dim, channels, size, p.width)
        self.critic = Critic(channels, size, p.width)
        if self.backbone_spec.numel():
            self.encoder: nn.Module = LatentEncoder(backbone_from_spec(self.backbone_spec), p.latent_dim)
        else:
            self.encoder = ConvEncoder(channels, size, p.latent_dim, p.width)

    def train_networks(self, images: Tensor, encoder: nn.Module | None, unlabeled: Tensor | None) -> None:
        p = self.params
        self.train_gan(images)
        if self.backbone_spec.numel():
            copy_weights(self.encoder.backbone, usable_backbone(encoder, images.shape[1], self.name, warn=False))
        frozen = [self.generator, self.critic]
        for net in frozen:
            net.eval().requires_grad_(False)

        def loss(x: Tensor) -> Tensor:
            rec = self.generator(self.encoder(x))
            return izi_f_loss(x, rec, self.critic.features(x), self.critic.features(rec), p.kappa).mean()

        try:
            train_network(self.encoder, images, loss, epochs=p.encoder_epochs or p.epochs, lr=p.lr,
                          batch_size=p.batch_size, seed=p.seed, name="fanogan encoder")
        finally:
            for net in frozen:
                net.requires_grad_(True)

    def train_gan(self, images: Tensor) -> None:
        """WGAN-GP: a critic step on every mini-batch, a generator step every ``critic_iters``."""
        p = self.params
        if len(images) < 2:
            raise ValueError(f"training {self.name} needs at least 2 images, got {len(images)}")
        gen, critic, device = self.generator, self.critic, self.device
        opt_g = torch.optim.Adam(gen.parameters(), lr=p.lr, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(critic.parameters(), lr=p.lr, betas=(0.0, 0.9))
        rng = torch.Generator().manual_seed(p.seed)
        gen.train()
        critic.train()
        checkpoint = LoopCheckpoint("fanogan WGAN-GP", p.epochs,
                                    {"generator": gen, "critic": critic, "opt_g": opt_g, "opt_d": opt_d}, rng)
        resumed = checkpoint.restore()  # an interrupted fit continues after its last finished epoch
        steps = [resumed.get("step", 0)]  # critic steps so far: the generator steps on every critic_iters-th
        # fp32 whatever the policy (the gradient penalty is not measured in bf16); only its host reads
        check = policy_for(device).eager_checks
        hint = divergence_hint("the detector's params.lr", p.lr)
        error = f"fanogan critic: loss became {{loss}} at epoch {{epoch}}; {hint}"

        def step(idx: Tensor, epoch: int, done: float) -> dict[str, Tensor]:
            x = images[idx].to(device)
            z = torch.randn(len(x), p.latent_dim, generator=rng).to(device)
            eps = torch.rand(len(x), 1, 1, 1, generator=rng).to(device)
            with torch.no_grad():
                fake = gen(z)
            penalty = gradient_penalty(critic, x, fake, eps)
            d_loss = wgan_critic_loss(critic(x), critic(fake)) + p.gp_weight * penalty
            value = optimizer_step(d_loss, opt_d, error, epoch, check=check)
            steps[0] += 1
            if steps[0] % p.critic_iters == 0:
                z = torch.randn(len(x), p.latent_dim, generator=rng).to(device)
                optimizer_step(wgan_generator_loss(critic(gen(z))), opt_g,
                               f"fanogan generator: loss became {{loss}} at epoch {{epoch}}; {hint}", epoch,
                               check=check)
            return {"loss": value}

        def saved(record: dict) -> None:
            checkpoint.save(epoch=record["epoch"], step=steps[0])
            log.debug("fanogan WGAN-GP epoch %d/%d critic loss %.5f", record["epoch"], p.epochs, record["loss"])

        run_epochs(step, lambda epoch: shuffled_batches(len(images), p.batch_size, rng), epochs=p.epochs,
                   start=resumed["epoch"], name="fanogan WGAN-GP", checkpoint=saved, live=check, error=error)
        gen.eval()
        critic.eval()

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Per-pixel residual + κ · feature residual (see :func:`fanogan_map`)."""
        rec = self.generator(self.encoder(x))
        return fanogan_map(x, rec, self.critic.features(x), self.critic.features(rec), self.params.kappa)
