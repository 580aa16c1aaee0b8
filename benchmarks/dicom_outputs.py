"""Benchmark: what ``medad predict --dicom-out`` adds (time and bytes per DICOM image, issue 30).

Writes ``--n`` synthetic 16-bit CR images of ``--size`` pixels (no frame of reference, as a
projection radiograph), fits the ``intensity`` model (nothing learned, spatial) at 64 px, and
times ``predict_run`` without and with ``dicom_out``, alternately, ``--repeats`` times each.

    .venv/bin/python benchmarks/dicom_outputs.py --n 64 --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import dicom_dataset, make_phantoms
from medad.prediction import predict_run


def write_cr(path: Path, size: int, seed: int, study: str, series: str) -> None:
    """A CR image: noise on a disc with a bright square, 16-bit, no position or orientation."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    image = np.where(x**2 + y**2 < 0.16, 20000 + rng.random((size, size)) * 4000, 0)
    image[size // 3: size // 2, size // 3: size // 2] = 50000
    ds = dicom_dataset(image.astype(np.uint16), 16, ComputedRadiographyImageStorage, PatientID="P1",
                       StudyInstanceUID=study, SeriesInstanceUID=series, Modality="CR")
    ds.save_as(path, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="DICOM images")
    parser.add_argument("--size", type=int, default=512, help="their side in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="medad-dicom-bench-"))
    cfg = RunConfig.model_validate({
        "data": {"image_size": 64, "val_fraction": 0.25}, "encoder": {"width": 4}, "method": {"name": "none"},
        "detector": {"name": "intensity", "also": [], "params": {"polarity": "bright"}},
        "train": {"epochs": 0, "progress": False},
    })
    AnomalyDetector(cfg).fit(make_phantoms(16, 64, seed=0)[0]).save(root / "model")
    (root / "in").mkdir()
    study, series = generate_uid(), generate_uid()
    for i in range(args.n):
        write_cr(root / "in" / f"{i:04d}.dcm", args.size, i, study, series)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for dicom_out in (False, True):
            t0 = time.perf_counter()
            predict_run(root / "model", [root / "in"], root / "pred", dicom_out=dicom_out, progress=False,
                        overwrite=True)
            times[dicom_out].append(time.perf_counter() - t0)
    sizes = {suffix: sum(f.stat().st_size for f in (root / "pred" / "dicom").rglob(f"*{suffix}")) / args.n / 1024
             for suffix in (".seg.dcm", ".sc.dcm")}
    print(f"{args.n} CR images of {args.size}x{args.size}, predict_run wall time (s), min of {args.repeats}:")
    print(f"  without --dicom-out {min(times[False]):.2f}   with {min(times[True]):.2f}   "
          f"added per image {(min(times[True]) - min(times[False])) / args.n:.3f}")
    print(f"  per image: SEG {sizes['.seg.dcm']:.0f} KiB, SC {sizes['.sc.dcm']:.0f} KiB")


if __name__ == "__main__":
    main()
