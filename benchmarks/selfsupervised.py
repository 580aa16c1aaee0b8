"""Benchmark: contrastive vs CON2 (each context) vs DINO with negatives (each negative kind).

For each dataset, variant and seed one run is trained (64 px, ResNet-18) with Mahalanobis as the
primary score; the same encoder also gives S_NND, S_LH and the temperature-weighted cosine score.
CON2 runs score both contexts (``detector.params.contexts``, CON2 eq. 16). Every run keeps the
checkpoint chosen by Rafiee's sensitivity score (``train.select_by: sensitivity``, no abnormal
image involved) and the benchmark also scores the last epoch's encoder (``checkpoints/last.pt``),
so the table shows what label-free selection gained or lost. Printed per dataset and variant:
image AUROC of every score for the selected and the last checkpoint, the selected epoch, and
train time. No score or hyper-parameter is chosen on the test split.

Selection here takes the highest sensitivity score outright (``train.select_margin: 0``). The
``careful_*`` columns show medad's default rule instead (``select_margin: 1``: leave the last
epoch only for a gain larger than the score's standard error), computed from the recorded scores;
it picks one of the two checkpoints scored above, so it costs no extra training.

Finished runs are appended to ``OUT/results.jsonl``; ``--resume`` skips runs already there.

    .venv/bin/python benchmarks/selfsupervised.py [--seeds 0] [--epochs 10] [--width 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score

from medad.config import RunConfig
from medad.data.loading import load_splits
from medad.methods.registry import build_method
from medad.model import AnomalyDetector
from medad.models.resnet import build_encoder
from medad.pipeline import train_run
from medad.train.checkpoint import load_checkpoint
from medad.train.selection import auroc_standard_error, choose_checkpoint

from results_table import append_row, load_rows, print_table, run_path  # benchmarks/ is on sys.path

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATASETS = {"breastmnist": ("breastmnist.npz", 1), "pneumoniamnist": ("pneumoniamnist.npz", 1),
            "lgg": ("lgg_brain_mri_dev", 3)}
SCORES = ("mahalanobis", "nnd", "lh", "cosine")


def _con2(context: str) -> dict[str, Any]:
    return {"method": {"name": "con2", "params": {"context": context}}, "detector_params": {"contexts": [context]}}


def _dino(negatives: list[str]) -> dict[str, Any]:
    params = {"negatives": negatives} if negatives else {"negative_weight": 0.0}
    return {"method": {"name": "dino_neg", "params": params}, "detector_params": {}}


VARIANTS: dict[str, dict[str, Any]] = {
    "contrastive": {"method": {"name": "contrastive"}, "detector_params": {}},
    "con2-invert": _con2("invert"),
    "con2-flip": _con2("flip"),
    "con2-equalize": _con2("equalize"),
    "dino-none": _dino([]),
    "dino-rotate90": _dino(["rotate90"]),
    "dino-rotate_random": _dino(["rotate_random"]),
    "dino-permute4": _dino(["permute4"]),
    "dino-permute16": _dino(["permute16"]),
    "dino-pixel_shuffle": _dino(["pixel_shuffle"]),
}


def config(dataset: str, variant: str, seed: int, epochs: int, width: int) -> RunConfig:
    folder, channels = DATASETS[dataset]
    spec = VARIANTS[variant]
    return RunConfig.model_validate(
        {
            "data": {"path": str(DATA / folder), "image_size": 64, "channels": channels, "val_fraction": 0.1},
            "encoder": {"width": width},
            "method": spec["method"],
            "detector": {"name": "mahalanobis", "params": spec["detector_params"], "also": list(SCORES[1:])},
            "train": {"epochs": epochs, "batch_size": 64, "seed": seed, "progress": False,
                      "select_by": "sensitivity", "select_margin": 0.0},
        }
    )


def last_epoch_aurocs(cfg: RunConfig, run_dir: Path) -> dict[str, float]:
    """Image AUROC of every score with the encoder of the last epoch instead of the selected one."""
    model = AnomalyDetector.load(run_dir / "model")
    state, _ = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    method = build_method(cfg.method, build_encoder(cfg.encoder, cfg.data.channels, cfg.data.image_size))
    method.load_state_dict(state["method"])
    model.encoder_ = method.encoder.to(model.device).eval()
    splits = load_splits(cfg.data, seed=cfg.train.seed)
    model.fit_scores(splits.train, splits.val)
    labels = splits.test.labels.numpy()
    return {name: float(roc_auc_score(labels, out.scores.cpu().numpy()))
            for name, out in model.score_all(splits.test).items()}


def add_careful_choice(row: dict, run_dir: Path, margin: float = 1.0) -> None:
    """Add the epoch (and AUROCs) that ``select_margin: margin`` keeps, from the run's sensitivity
    scores and their recorded standard errors (computed from the image counts for histories written
    before medad recorded them)."""
    model = json.loads((run_dir / "model" / "model.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    held_out = min(model["config"]["train"]["sensitivity_holdout"], metrics["n_train"] // 2)
    history = [h if "sensitivity_se" in h else
               {**h, "sensitivity_se": auroc_standard_error(h["sensitivity"], metrics["n_val"], held_out)}
               for h in model["history"] if h.get("sensitivity") is not None]
    row["careful_epoch"] = choose_checkpoint(history, margin)
    prefix = "auroc" if row["careful_epoch"] == row["selected_epoch"] else "last_auroc"
    row.update({f"careful_auroc_{s}": row[f"{prefix}_{s}"] for s in SCORES})


def run(dataset: str, variant: str, seed: int, epochs: int, width: int, out: Path) -> dict:
    """Train one configuration and return its row of results."""
    cfg = config(dataset, variant, seed, epochs, width)
    run_dir = run_path(out, dataset, variant, seed)
    metrics = train_run(cfg, run_dir, overwrite=True)
    row = {"dataset": dataset, "variant": variant, "seed": seed, "epochs": epochs, "width": width,
           "train_seconds": metrics["train_seconds"], "selected_epoch": metrics["selected_epoch"]}
    row.update({f"auroc_{k}": v["image_auroc"] for k, v in metrics["scores"].items()})
    last = (last_epoch_aurocs(cfg, run_dir) if metrics["selected_epoch"] != epochs
            else {k: v["image_auroc"] for k, v in metrics["scores"].items()})
    row.update({f"last_auroc_{k}": v for k, v in last.items()})
    add_careful_choice(row, run_dir)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-selfsupervised"))
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.jsonl")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    results = args.out / "results.jsonl"
    rows = load_rows(results, args.resume)
    done = {(r["dataset"], r["variant"], r["seed"]) for r in rows}
    for row in rows:  # rows written before the careful_* columns existed
        folder = run_path(args.out, row["dataset"], row["variant"], row["seed"])
        if "careful_epoch" not in row and (folder / "model" / "model.json").is_file():
            add_careful_choice(row, folder)
    for seed in args.seeds:  # seeds outermost: an interrupted benchmark still covers every variant
        for dataset in args.datasets:
            for variant in args.variants:
                if (dataset, variant, seed) not in done:
                    row = run(dataset, variant, seed, args.epochs, args.width, args.out)
                    rows.append(row)
                    append_row(results, row)
    print(f"\n64 px, ResNet-18 width {args.width}, {args.epochs} epochs, CPU; mean ± std over seeds; "
          "auroc_* = checkpoint with the highest sensitivity score, last_auroc_* = last epoch, "
          "careful_* = select_margin 1 (the highest score only if it beats the last by > 1 SE)")
    columns = [*(f"{p}auroc_{s}" for p in ("", "last_", "careful_") for s in SCORES), "selected_epoch",
               "careful_epoch", "train_seconds"]
    print_table(rows, DATASETS, "variant", VARIANTS, columns, width=23)


if __name__ == "__main__":
    main()
