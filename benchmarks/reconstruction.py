"""Benchmark: reconstruction detectors and DDAD with unlabeled pools of several anomaly rates.

Variants (``method: none``, the detector trains its own networks at 64 px): ``ae``, ``memae``,
``ae_u`` (also with the DDAD authors' linear latent layer, and with their 2048 hidden units),
``msssim_ae``, DDAD R_intra (no pool) and its raw A_intra (``refine: false``; also with the
authors' bottleneck), DDAD R_dual with pools of anomaly rate 0, 0.2 and 0.6, ``igd`` and
``fanogan``. A variant whose detector is not registered is skipped with a note.

Data, following DDAD's repartition (Table 1: D_n and the normals of D_u are different images):

* ``pneumoniamnist`` (``$MEDAD_DATA_DIR/pneumoniamnist.npz``): D_n = ``--max-train`` training
  normals (``data.max_train``, seeded); the pool's normals are the *other* training normals and
  its anomalies the pneumonia images of the training split; test = the MedMNIST test split.
* ``lgg`` (``lgg_brain_mri_dev``, 3 channels): D_n = ``--max-train`` files of ``train/good`` (the
  validation normals are drawn from them); the pool's normals are the remaining ``train/good``
  files (other slices, possibly of the same training patients) and its anomalies
  ``unlabeled_source/tumor``; test = ``test/`` with tumour masks (pixel AUROC, Dice).

Pools are built with :func:`medad.data.pool.build_pool` and saved to
``OUT/pools/<dataset>-ar<rate>-n<size>-s<seed>.npz`` (``images`` + ``hidden_labels``) so that
``data.unlabeled`` points at them, as a user would run it. Per run: image AUROC / AP, pixel AUROC,
Dice at the label-free pixel threshold and the oracle Dice (LGG), train time, and for DDAD the
image AUROC of the raw A_intra / A_inter maps before the ASR-Net and the label-free pixel AUROCs
of the raw and refined maps on synthetic anomalies (``fpi_*``). Finished runs are
appended to ``OUT/results.jsonl``; ``--resume`` skips runs already there and continues an
interrupted one from the networks it had finished (``checkpoints/networks/``).

    .venv/bin/python benchmarks/reconstruction.py [--epochs 50] [--asr-epochs 100] [--max-train 500]
    .venv/bin/python benchmarks/reconstruction.py --epochs 1 --asr-epochs 1 --max-train 32 --pool-size 32  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.config import RunConfig
from medad.data.folder import load_plain_folder
from medad.data.imageset import ImageSet
from medad.data.loading import load_splits, load_test_split
from medad.data.medmnist import load_medmnist
from medad.data.pool import build_pool
from medad.detectors.registry import DETECTORS
from medad.model import AnomalyDetector
from medad.pipeline import train_run

from results_table import append_row, load_rows, print_table, run_path  # benchmarks/ is on sys.path

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATASETS = {"pneumoniamnist": ("pneumoniamnist.npz", 1), "lgg": ("lgg_brain_mri_dev", 3)}
IMAGE_SIZE = 64

# variant -> (detector, extra detector params, pool anomaly rate or None)
VARIANTS: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "ae": ("ae", {}, None),
    "memae": ("memae", {}, None),
    "ae_u": ("ae_u", {}, None),
    "ae_u linear latent": ("ae_u", {"linear_latent": True}, None),
    "ae_u linear latent, hidden 2048": ("ae_u", {"linear_latent": True, "hidden": 2048}, None),
    "msssim_ae": ("msssim_ae", {}, None),
    "ddad-R_intra": ("ddad", {"variant": "intra"}, None),
    "ddad-A_intra": ("ddad", {"variant": "intra", "refine": False}, None),
    "ddad-A_intra linear latent, hidden 2048": ("ddad", {"variant": "intra", "refine": False, "linear_latent": True,
                                                         "hidden": 2048}, None),
    "ddad-R_dual-ar0": ("ddad", {"variant": "dual"}, 0.0),
    "ddad-R_dual-ar0.2": ("ddad", {"variant": "dual"}, 0.2),
    "ddad-R_dual-ar0.6": ("ddad", {"variant": "dual"}, 0.6),
    "igd": ("igd", {}, None),
    "fanogan": ("fanogan", {}, None),
}
COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "dice", "oracle_dice", "raw_intra_auroc", "raw_inter_auroc",
           "fpi_intra", "fpi_inter", "fpi_refined", "train_seconds")


def config(dataset: str, variant: str, seed: int, args: argparse.Namespace, pool: Path | None) -> RunConfig:
    folder, channels = DATASETS[dataset]
    detector, extra, _ = VARIANTS[variant]
    params: dict[str, Any] = {"epochs": args.epochs, "seed": seed, **extra}
    if detector == "ddad":
        params["asr_epochs"] = args.asr_epochs
    return RunConfig.model_validate(
        {
            "data": {"path": str(DATA / folder), "image_size": IMAGE_SIZE, "channels": channels, "val_fraction": 0.1,
                     "max_train": args.max_train, "unlabeled": None if pool is None else str(pool)},
            "method": {"name": "none"},
            "detector": {"name": detector, "params": params, "also": []},
            "train": {"epochs": 1, "seed": seed, "progress": False},
        }
    )


def _pool_sources(cfg: RunConfig, dataset: str) -> tuple[ImageSet, ImageSet]:
    """Training normals not used as D_n or validation, and the training-side abnormal images."""
    used = load_splits(cfg.data, seed=cfg.train.seed)
    taken = set(used.train.ids) | set(used.val.ids)
    everything = load_splits(cfg.data.model_copy(update={"max_train": None, "val_fraction": 0.0}), seed=0).train
    normals = everything.subset([i for i, name in enumerate(everything.ids) if name not in taken])
    size = {"image_size": cfg.data.image_size, "channels": cfg.data.channels}
    if dataset == "pneumoniamnist":
        data = load_medmnist(cfg.data.path)
        abnormal = np.flatnonzero(data.labels["train"] != data.normal_label)
        abnormals = data.imageset("train", index=abnormal, **size)[0]
    else:
        abnormals = load_plain_folder(Path(cfg.data.path) / "unlabeled_source" / "tumor", **size).images
    return normals, abnormals


def make_pool(cfg: RunConfig, dataset: str, rate: float, size: int, seed: int, out: Path, cache: dict) -> Path:
    """Build (once) and save the pool of ``size`` images at anomaly ``rate``; returns its npz path."""
    path = out / "pools" / f"{dataset}-ar{rate:g}-n{size}-s{seed}.npz"
    if path.exists():
        return path
    key = (dataset, seed)
    if key not in cache:
        cache[key] = _pool_sources(cfg, dataset)
    normals, abnormals = cache[key]
    pool, hidden = build_pool(normals, abnormals, size=size, anomaly_rate=rate, seed=seed)
    images = (pool.images.clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)  # [N, H, W(, 3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, hidden_labels=hidden, ids=np.array(pool.ids))
    print(f"pool {path.name}: {len(pool)} images, {int(hidden.sum())} hidden anomalies", flush=True)
    return path


FPI_COLUMNS = {"fpi_intra": "ddad_fpi_auroc_intra", "fpi_inter": "ddad_fpi_auroc_inter",
               "fpi_refined": "ddad_fpi_auroc_refined"}


@torch.no_grad()
def add_ddad_columns(row: dict, run_dir: Path) -> None:
    """For DDAD rows: image AUROC (mean of the map) of the raw A_intra and A_inter maps, i.e.
    before the ASR-Net, to show what the refinement adds; and the label-free pixel AUROCs of the
    raw and refined maps on synthetic (FPI) anomalies of the validation normals
    (``DDADDetector.diagnostics``), which say whether the ASR-Net had anything to learn from."""
    model = AnomalyDetector.load(run_dir / "model")
    test = load_test_split(model.config.data)
    ddad = model.detectors_["ddad"]
    x = model.prepare(test)
    raw = torch.cat([ddad.raw_maps(batch.to(model.device)).cpu() for batch in x.split(64)]).mean((2, 3))
    labels = test.labels.numpy()
    row["raw_intra_auroc"] = float(roc_auc_score(labels, raw[:, 0].numpy()))
    row["raw_inter_auroc"] = float(roc_auc_score(labels, raw[:, 1].numpy())) if raw.shape[1] == 2 else None
    found = json.loads((run_dir / "metrics.json").read_text())  # the pipeline wrote them...
    if not set(FPI_COLUMNS.values()) & set(found):  # ...unless the run predates the diagnostics
        found = model.diagnostics(load_splits(model.config.data, seed=model.config.train.seed).val)
    row.update({column: found.get(key) for column, key in FPI_COLUMNS.items()})


def run(dataset: str, variant: str, seed: int, args: argparse.Namespace, cache: dict) -> dict:
    """Train one configuration and return its row of results."""
    rate = VARIANTS[variant][2]
    pool = None
    if rate is not None:
        pool = make_pool(config(dataset, variant, seed, args, None), dataset, rate, args.pool_size or args.max_train,
                         seed, args.out, cache)
    cfg = config(dataset, variant, seed, args, pool)
    folder = run_path(args.out, dataset, variant, seed)
    # --resume also continues a run interrupted inside its detector's fit (finished networks are loaded)
    metrics = train_run(cfg, folder, resume=args.resume, overwrite=not args.resume)
    row = {"dataset": dataset, "variant": variant, "seed": seed, "epochs": args.epochs, "pool_rate": rate,
           "pool_size": None if pool is None else args.pool_size or args.max_train, "n_train": metrics["n_train"]}
    row.update({c: metrics.get(c) for c in COLUMNS})
    if VARIANTS[variant][0] == "ddad":
        add_ddad_columns(row, folder)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of every detector's network(s)")
    parser.add_argument("--asr-epochs", type=int, default=100, help="DDAD ASR-Net epochs")
    parser.add_argument("--max-train", type=int, default=500, help="D_n: training normals (incl. validation on LGG)")
    parser.add_argument("--pool-size", type=int, default=None, help="unlabeled pool size (default: --max-train)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-reconstruction"))
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.jsonl")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    results = args.out / "results.jsonl"
    rows = load_rows(results, args.resume)
    done = {(r["dataset"], r["variant"], r["seed"]) for r in rows}
    for row in rows:  # DDAD rows written before the raw-map and FPI columns existed (not saved back)
        folder = run_path(args.out, row["dataset"], row["variant"], row["seed"])
        if VARIANTS[row["variant"]][0] == "ddad" and "fpi_intra" not in row and (folder / "model").is_dir():
            add_ddad_columns(row, folder)
    variants = []
    for variant in args.variants:
        if VARIANTS[variant][0] in DETECTORS:
            variants.append(variant)
        else:
            print(f"note: skipping {variant}: detector {VARIANTS[variant][0]!r} is not registered", flush=True)
    cache: dict = {}
    for seed in args.seeds:  # seeds outermost: an interrupted benchmark still covers every variant
        for dataset in args.datasets:
            for variant in variants:
                if (dataset, variant, seed) not in done:
                    row = run(dataset, variant, seed, args, cache)
                    rows.append(row)
                    append_row(results, row)
    print(f"\n{IMAGE_SIZE} px, method none, {args.epochs} epochs (ASR-Net {args.asr_epochs}), D_n = {args.max_train}, "
          "CPU; mean ± std over seeds; dice at the label-free pixel threshold, oracle_dice on the test masks")
    print_table(rows, DATASETS, "variant", VARIANTS, COLUMNS, width=16)


if __name__ == "__main__":
    main()
