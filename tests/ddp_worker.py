"""Worker for tests/test_distributed.py (not a test module): run alone or under torchrun.

``python tests/ddp_worker.py OUT.json [noise]`` trains a toy contrastive method three ways with
the real training loop — 3 epochs straight; 2 epochs then an interruption; a resume of that run
to epoch 3 — and rank 0 writes the per-epoch losses and the final weights of each to OUT.json.
Without ``noise`` the loss is deterministic, so one process and two must agree to rounding; with
it every step draws random numbers, so a resume is exact only if every rank's RNG is restored.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from medad import distributed
from medad.config import TrainConfig
from medad.methods.base import PretrainMethod
from medad.methods.contrastive import nt_xent
from medad.train.loop import train_method


class Interrupt(Exception):
    """Raised on every rank at the same step, as a Ctrl-C would stop a run."""


class ToyContrastive(PretrainMethod):
    """A linear encoder; NT-Xent over the gathered global batch plus a per-image term."""

    name = "toy"

    def __init__(self, noise: bool, stop_at: float | None = None):
        super().__init__(torch.nn.Linear(16, 4))
        self.noise, self.stop_at = noise, stop_at

    def training_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.flatten(1)
        other = x.flip(1) + (0.1 * torch.randn_like(x) if self.noise else 0)
        z1, z2 = self.encoder(x), self.encoder(other)
        loss = nt_xent(distributed.gather(z1), distributed.gather(z2), 0.5) + 0.01 * z1.pow(2).sum(1).mean()
        return {"loss": loss}

    def on_train_step(self, progress: float) -> None:
        if self.stop_at is not None and progress >= self.stop_at:
            raise Interrupt


def train(noise: bool, checkpoint: Path | None, stop_at: float | None = None, resume: bool = False) -> dict:
    torch.manual_seed(0)
    method = ToyContrastive(noise, stop_at)
    images = torch.rand(48, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, optimizer="sgd", schedule="constant", progress=False,
                      checkpoint_every=1)
    history = train_method(method, images, images[:8], cfg, checkpoint_path=checkpoint, resume=resume)
    return {"loss": [h["loss"] for h in history], "val_loss": [h["val_loss"] for h in history],
            "weight": method.encoder.weight.detach().flatten().tolist()}


def main(out: Path, noise: bool) -> None:
    distributed.init_from_env(torch.device("cpu"))
    result = {"world_size": distributed.world_size(), "straight": train(noise, None)}
    # every rank checkpoints into the same folder (rank 0 writes), as in a run folder
    folder = Path(distributed.broadcast_object(tempfile.mkdtemp() if distributed.is_main() else None))
    try:
        train(noise, folder / "last.pt", stop_at=2 / 3)
    except Interrupt:
        pass
    distributed.barrier()
    result["resumed"] = train(noise, folder / "last.pt", resume=True)
    if distributed.is_main():
        out.write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), noise="noise" in sys.argv[2:])
