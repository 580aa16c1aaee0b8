"""PaDiM fit memory and time on this machine (prints a table; never asserted in tests).

Fits ``PadimDetector`` with a width-64 ResNet-18 (random weights, imagenet stem, channels_last)
on random images and scores a test batch. Each configuration runs in a fresh process, so its peak
RSS (``resource.getrusage``) is its own; "before fit" is the peak after building the images and
the encoder, "fitted" the size of the fitted buffers, and "naive" the float32 embeddings
``[N, d, h, w]`` that a non-streaming fit would hold (before any covariance).

    python benchmarks/padim_memory.py                          # 1,000 images at 128 px, d = 100 and 448
    python benchmarks/padim_memory.py --n 200 --size 64 --d 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import torch

from medad.detectors.padim import PadimDetector
from medad.models.resnet import ResNetEncoder


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(n: int, size: int, d: int, n_test: int, batch_size: int) -> dict[str, float]:
    """Fit and score one configuration in this process; timings in s, memory in MB."""
    torch.manual_seed(0)
    images = torch.rand(n, 1, size, size)
    tests = torch.rand(n_test, 1, size, size)
    encoder = ResNetEncoder(1, width=64, stem="imagenet").to(memory_format=torch.channels_last).eval()
    before = _peak_mb()
    start = time.perf_counter()
    detector = PadimDetector(d=d, batch_size=batch_size).fit(images, encoder)
    fit_s = time.perf_counter() - start
    fit_peak = _peak_mb()
    start = time.perf_counter()
    detector.score(tests, encoder)
    score_s = time.perf_counter() - start
    h, w, d_used = detector.mean.shape
    return {
        "n": n, "size": size, "d": d_used, "grid": h * w,
        "fit_s": fit_s, "score_s": score_s, "score_img_s": n_test / score_s,
        "before_mb": before, "fit_peak_mb": fit_peak, "peak_mb": _peak_mb(),
        "fitted_mb": sum(b.numel() * b.element_size() for b in detector.buffers()) / 2**20,
        "naive_mb": n * d_used * h * w * 4 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="training images")
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="image side (px)")
    parser.add_argument("--d", type=int, nargs="+", default=[100, 448], help="channels kept (448 = all of layers 1-3)")
    parser.add_argument("--n-test", type=int, default=200, help="images scored")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; width-64 ResNet-18, random weights")
    header = ("n", "size", "d", "grid", "fit s", "score s", "score img/s", "before MB", "fit peak MB",
              "peak MB", "fitted MB", "naive MB")
    print(" | ".join(header))
    ctx = multiprocessing.get_context("spawn")
    for n in args.n:
        for size in args.size:
            for d in args.d:
                with ctx.Pool(1) as pool:
                    r = pool.apply(run, (n, size, d, args.n_test, args.batch_size))
                print(
                    f"{r['n']} | {r['size']} | {r['d']} | {r['grid']} | {r['fit_s']:.1f} | {r['score_s']:.1f} | "
                    f"{r['score_img_s']:.1f} | {r['before_mb']:.0f} | {r['fit_peak_mb']:.0f} | {r['peak_mb']:.0f} | "
                    f"{r['fitted_mb']:.0f} | {r['naive_mb']:.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
