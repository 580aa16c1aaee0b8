"""Pre-training speed on a GPU: every seed method's loop against the bare ResNet-18 step.

For each method, one epoch of ``train_method`` warms up (cuDNN autotuning) and a second is timed;
its images/s (training images, each seen as the method's views) is set beside the bare step: the
same encoder, channels_last, the same precision, forward + backward + SGD on two views per image
(what contrastive's encoder sees), timed after warm-up with the GPU synchronised. Also printed:
peak GPU memory and the host synchronisations per step of each method's loop (torch's sync debug
mode counts them; the epoch's one read of the logged values is one).

    python benchmarks/gpu_speed.py --size 224 --batch 128 --json out.json

Prints a table; with ``--json`` also writes the figures. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from medad.config import EncoderConfig, MethodConfig, TrainConfig
from medad.device_policy import ComputePolicy
from medad.methods.registry import build_method
from medad.models.resnet import build_encoder
from medad.train.loop import train_method

METHODS = ("contrastive", "ccd", "pmsacl", "con2", "dino_neg")


def bare_step(size: int, batch: int, precision: str, steps: int) -> float:
    """Training images/s of the bare encoder step on two views per image."""
    device = torch.device("cuda")
    encoder = build_encoder(EncoderConfig(), in_channels=1, image_size=size).to(device)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)
    policy = ComputePolicy.resolve(device, precision)
    x = torch.rand(2 * batch, 1, size, size, device=device)

    def step() -> None:
        with policy.autocast():
            loss = encoder(x).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with policy.activate():
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def method_speed(name: str, size: int, batch: int, precision: str, steps: int) -> dict[str, float]:
    """Images/s of the timed epoch, peak memory and host syncs per step of ``name``'s loop."""
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(), in_channels=1, image_size=size)
    method = build_method(MethodConfig(name=name), encoder)
    images = torch.rand(batch * steps, 1, size, size)
    cfg = TrainConfig(epochs=1, batch_size=batch, progress=False, precision=precision, sensitivity_holdout=0)
    torch.cuda.reset_peak_memory_stats()
    train_method(method, images, None, cfg, device="cuda")  # warm-up: autotuning, allocator
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = train_method(method, images, None, cfg, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"images_per_second": history[-1]["images_per_second"], "syncs_per_step": syncs / steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  {args.size} px  batch {args.batch}  "
          f"{args.precision}", flush=True)
    bare = bare_step(args.size, args.batch, args.precision, args.steps)
    rows = {"bare ResNet-18 step (2 views)": {"images_per_second": bare}}
    print(f"{'bare ResNet-18 step (2 views)':<32} {bare:10.0f} img/s", flush=True)
    for name in args.methods:
        try:
            row = method_speed(name, args.size, args.batch, args.precision, args.steps)
        except Exception as exc:  # report and go on: one method must not cost the others' figures
            row = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name:<32} failed: {row['error']}", flush=True)
        else:
            row["ratio_to_bare"] = row["images_per_second"] / bare
            print(f"{name:<32} {row['images_per_second']:10.0f} img/s  {row['ratio_to_bare']:.2f} of bare  "
                  f"{row['syncs_per_step']:.1f} syncs/step  peak {row['peak_gib']:.1f} GiB", flush=True)
        rows[name] = row
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, **vars(args),
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
