"""Training and augmentation throughput on this machine (prints tables; never asserted in tests).

Training img/s = images per second through ``ContrastiveMethod.training_loss`` + ``backward()``
(two augmented views per image, so the encoder sees twice as many), batch 64, for each stem, image
size, width and memory format. Augmentation img/s = one ``WeakAugment`` call on a batch of 256.

    python benchmarks/encoder_speed.py            # full table (a few minutes on 2 cores)
    python benchmarks/encoder_speed.py --steps 1 --stems imagenet --sizes 64 --widths 32 16
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from medad.augment.weak import WeakAugment
from medad.methods.contrastive import ContrastiveMethod
from medad.models.resnet import ResNetEncoder


def train_speed(stem: str, size: int, width: int, channels_last: bool, batch: int, steps: int) -> list[float]:
    """Images per second of each timed forward + backward step of the contrastive loss."""
    torch.manual_seed(0)
    method = ContrastiveMethod(ResNetEncoder(1, width, stem)).train()
    images = torch.rand(batch, 1, size, size)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    speeds = []
    for step in range(steps + 1):  # the first step is a warm-up
        start = time.perf_counter()
        method.zero_grad(set_to_none=True)
        method.training_loss(images)["loss"].backward()
        if step:
            speeds.append(batch / (time.perf_counter() - start))
    return speeds


def augment_speed(channels: int, batch: int = 256, size: int = 64, repeats: int = 10) -> list[float]:
    """Images per second of each of ``repeats`` WeakAugment calls (one view)."""
    aug, x, g = WeakAugment(), torch.rand(batch, channels, size, size), torch.Generator().manual_seed(0)
    aug(x, generator=g)
    speeds = []
    for _ in range(repeats):
        start = time.perf_counter()
        aug(x, generator=g)
        speeds.append(batch / (time.perf_counter() - start))
    return speeds


def _summary(speeds: list[float]) -> str:
    return f"{statistics.median(speeds):8.1f} {max(speeds):8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--stems", nargs="+", default=["cifar", "imagenet"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; img/s as median and best step")
    print("augmentation (WeakAugment, one view, batch 256, 64 px)")
    print(f"  {'channels':37s} {'median':>8s} {'best':>8s}")
    for channels in (1, 3):
        print(f"  {channels:<37d} {_summary(augment_speed(channels))}")
    print(f"training (contrastive forward+backward, batch {args.batch}, 1 channel)")
    print(f"  {'stem':9s} {'px':>3s} {'width':>5s} {'format':>18s} {'median':>8s} {'best':>8s}")
    for stem, size, width, channels_last in itertools.product(
        args.stems, args.sizes, args.widths, (False, True)
    ):
        speeds = train_speed(stem, size, width, channels_last, args.batch, args.steps)
        fmt = "channels_last" if channels_last else "contiguous"
        print(f"  {stem:9s} {size:3d} {width:5d} {fmt:>18s} {_summary(speeds)}", flush=True)


if __name__ == "__main__":
    main()
