"""Benchmark: contrastive vs CCD vs PMSACL pre-training, each scored with PaDiM and the feature scores.

For each dataset, method and seed one run is trained (64 px, ResNet-18) with PaDiM as the primary
detector; the same encoder also gives the Mahalanobis, S_NND and S_LH image scores, so every
score of a method shares one pre-training. Printed per dataset and method, as mean ± std over
the seeds: image AUROC of PaDiM and of each feature score, and — on LGG, which has tumour masks —
the AUROC of every score on a slice-position-matched subset (see ``lgg_position.py``),
pixel AUROC, PRO and Dice/IoU at the label-free pixel threshold (the 0.99 quantile of
validation-normal pixel scores), oracle Dice (threshold chosen on the test masks: optimistic, for
comparison with MedIAnomaly only), and train time. No score or hyper-parameter is chosen on the
test split; every method runs with its documented defaults.

Each finished run is appended to ``OUT/results.jsonl`` so an interrupted benchmark keeps its
results; ``--resume`` skips runs already there.

    .venv/bin/python benchmarks/pretraining.py [--seeds 0 1 2] [--epochs 15] [--width 32]
    .venv/bin/python benchmarks/pretraining.py --intensity percentile --out runs/bench-pretraining-percentile

``--intensity`` sets ``data.intensity`` (per-image scaling of every input; default ``as_read``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medad.config import RunConfig
from medad.pipeline import train_run

from lgg_position import position_matched_auroc  # benchmarks/ is on sys.path
from results_table import append_row, load_rows, print_table, run_path

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATASETS = {"lgg": ("lgg_brain_mri_dev", 3), "pneumoniamnist": ("pneumoniamnist.npz", 1)}
METHODS = ("contrastive", "ccd", "pmsacl")
FEATURE_SCORES = ("mahalanobis", "nnd", "lh")
PIXEL_KEYS = ("pixel_auroc", "pro", "dice", "iou", "oracle_dice")


def run(dataset: str, method: str, seed: int, epochs: int, width: int, out: Path, intensity: str) -> dict:
    """Train one configuration and return its row of results."""
    folder, channels = DATASETS[dataset]
    cfg = RunConfig.model_validate(
        {
            "data": {"path": str(DATA / folder), "image_size": 64, "channels": channels, "val_fraction": 0.1,
                     "intensity": intensity},
            "encoder": {"width": width},
            "method": {"name": method},
            "detector": {"name": "padim", "also": list(FEATURE_SCORES)},
            "train": {"epochs": epochs, "batch_size": 64, "seed": seed, "progress": False},
        }
    )
    metrics = train_run(cfg, run_path(out, dataset, method, seed), overwrite=True)
    row = {"dataset": dataset, "method": method, "seed": seed, "epochs": epochs, "width": width,
           "intensity": intensity, "train_seconds": metrics["train_seconds"]}
    row.update({f"auroc_{k}": v["image_auroc"] for k, v in metrics["scores"].items()})
    row.update({k: metrics[k] for k in PIXEL_KEYS if k in metrics})
    return add_position_matched(row, out)


def add_position_matched(row: dict, out: Path) -> dict:
    """For LGG, add the position-matched AUROC of every score (see ``lgg_position.py``)."""
    if row["dataset"] == "lgg":
        folder = run_path(out, row["dataset"], row["method"], row["seed"])
        matched = position_matched_auroc(folder, DATA / DATASETS["lgg"][0] / "manifest.csv")
        row.update({f"auroc_{k}_posmatched": v for k, v in matched.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--intensity", choices=["as_read", "minmax", "percentile"], default="as_read")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pretraining"))
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.jsonl")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = load_rows(results, args.resume)
    rows = [r if "auroc_padim_posmatched" in r else add_position_matched(r, args.out) for r in rows]
    done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    for seed in args.seeds:  # seeds outermost: an interrupted benchmark still covers every method
        for dataset in args.datasets:
            for method in args.methods:
                if (dataset, method, seed) in done:
                    continue
                row = run(dataset, method, seed, args.epochs, args.width, args.out, args.intensity)
                rows.append(row)
                append_row(results, row)
    print(f"\n64 px, ResNet-18 width {args.width}, {args.epochs} epochs, intensity {args.intensity}, CPU; "
          "mean ± std over seeds")
    scores = ["padim", *FEATURE_SCORES]
    columns = [*(f"auroc_{s}" for s in scores), *PIXEL_KEYS, *(f"auroc_{s}_posmatched" for s in scores),
               "train_seconds"]
    print_table(rows, DATASETS, "method", METHODS, columns)


if __name__ == "__main__":
    main()
