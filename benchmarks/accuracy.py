"""Benchmark: medad's presets and seed methods beside the trivial baselines, on the three dev sets.

One fixed suite (issue 11). For each dataset it prints one table whose rows are

* **trivial baselines**, computed here without learning anything: the mean intensity and the
  intensity standard deviation of each image (two-sided: |z| against the training normals), the
  raw-pixel distance to the nearest training normal, and on LGG the FLAIR intensity map — once as
  issue 11 defines it (z-scored inside the head, σ = 2 px at 128 px, max as image score, pixel
  threshold at the 0.99 quantile of validation-normal pixels) and once with the ``brain-mri``
  preset's map post-processing (hyperintense part only, eroded head mask, its blur and pixel
  threshold) — the prior alone, so that the preset's row shows what its learned part adds;
* **presets** (``medad train --preset NAME``), 3 seeds, mean ± std, and a preset's previous setting
  beside it when it changed (``chest-xray until 2026-12-06 (Mahalanobis + DAE)``);
* **seed methods** (contrastive, CCD, PMSACL, CON2, DINO with negatives), 1 seed, each with the
  score its paper uses (Mahalanobis, PaDiM, PaDiM, S_NND, temperature-weighted cosine) and the
  embedding scores beside it ("features": Mahalanobis / S_NND / S_LH), at 64 px with ResNet-18
  width 32; PMSACL also without its multi-centring loss (``weight_ctr: 0``), the setting that
  works at these budgets; and the untrained encoder as their floor, with its BatchNorm statistics
  as initialised and re-estimated on the training normals (issue 14), and (3 seeds) S_NND on its
  first stage, a training-free texture statistic that is the floor of any early-stage score. On
  the two sets whose images are large (``covid224``, ``lgg``) the rows marked ``@128`` repeat
  them at 128 px, and PMSACL is also scored with IGD fine-tuned from its encoder, the detector
  its paper reports best (issue 29);
* **candidates** for a preset, measured beside it on the sets it must hold on (``chest-xray
  candidate: CON2 @128 + DAE (fused)``: CON2 at 128 px in place of the preset's contrastive at 64 px).

Columns: image AUROC and AP of the primary score; on LGG also the AUROC on position-matched test
normals (brain_frac ≥ 0.3, see ``lgg_position.py``), pixel AUROC, PRO, Dice and IoU at the
label-free pixel threshold and the oracle Dice (threshold chosen on the test masks: optimistic,
only for comparison with papers); the wall time of each run end to end (loading, training,
fitting, scoring, report). Thresholds are label-free as in the product; nothing is chosen on the
test split here (the presets were chosen on these dev sets: docs/presets.md).

Every finished run is appended to ``OUT/results.jsonl`` at once; ``--resume`` skips the runs
already there, so a long suite can finish over several sessions.

    .venv/bin/python benchmarks/accuracy.py --resume                       # the whole suite
    .venv/bin/python benchmarks/accuracy.py --resume --datasets lgg --rows brain-mri
    .venv/bin/python benchmarks/accuracy.py --print-only                   # the table so far
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medad.config import DataConfig, RunConfig, from_preset
from medad.data.loading import DatasetSplits, load_splits
from medad.detectors.maps import smooth_maps
from medad.evaluation.metrics import pixel_auroc
from medad.evaluation.pixel import oracle_dice, pro_score, segmentation_scores
from medad.pipeline import train_run
from medad.presets import PRESETS, deep_merge

from lgg_position import position_matched_auroc  # benchmarks/ is on sys.path
from results_table import append_row, load_rows, mean_std, run_path

DATA = Path(os.environ.get("MEDAD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@dataclass(frozen=True)
class Dataset:
    path: str
    image_size: int  # of the trivial baselines (presets and methods bring their own)
    channels: int


DATASETS = {
    "lgg": Dataset("lgg_brain_mri_dev", 128, 3),
    "pneumoniamnist": Dataset("pneumoniamnist.npz", 64, 1),
    "breastmnist": Dataset("breastmnist.npz", 64, 1),
    "covid224": Dataset("chest_xray_covid_224", 64, 1),  # trivial rows at 64 px, as its README
}
LGG_MANIFEST = DATA / "lgg_brain_mri_dev" / "manifest.csv"
PIXEL_KEYS = ("pixel_auroc", "pro", "dice", "iou", "oracle_dice")


@dataclass(frozen=True)
class Row:
    """One line of the table: ``kind`` is trivial (computed here), pipeline (a fixed config, no
    training to speak of), preset or method; ``values`` is a nested config on top of the dataset."""

    kind: str
    datasets: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    seeds: tuple[int, ...] = (0,)


_FLAIR = {"method": {"name": "none"}, "data": {"image_size": 128, "channels": 3}}
ROWS: dict[str, Row] = {
    "mean intensity": Row("trivial", tuple(DATASETS)),
    "intensity std": Row("trivial", tuple(DATASETS)),
    "raw-pixel NN": Row("trivial", tuple(DATASETS)),
    "FLAIR map (issue 11)": Row("trivial", ("lgg",)),
    "FLAIR prior, brain-mri maps": Row("pipeline", ("lgg",), {
        **_FLAIR, "detector": {"name": "intensity", "params": {"polarity": "bright", "map_channels": [1]}},
        "maps": PRESETS["brain-mri"].values["maps"],
        "evaluation": PRESETS["brain-mri"].values["evaluation"]}),
    "brain-mri": Row("preset", ("lgg",), preset="brain-mri", seeds=(0, 1, 2)),
    "chest-xray": Row("preset", ("pneumoniamnist", "covid224"), preset="chest-xray", seeds=(0, 1, 2)),
    # the preset from 2026-12-03 to 2026-12-06, spelled out: the last stage's Mahalanobis score fused
    # with the DAE
    "chest-xray until 2026-12-06 (Mahalanobis + DAE)": Row("preset", ("pneumoniamnist", "covid224"), {
        "data": {"image_size": 64}, "encoder": {"width": 64}, "method": {"name": "contrastive"},
        "detector": {"name": "mahalanobis", "fuse": ["mahalanobis", "dae"], "also": [
            "nnd", "lh", "cosine",
            {"name": "dae", "params": {"polarity": "abs", "epochs": 40, "noise_std": 0.4, "work_size": 64}}]},
        "maps": {"foreground": 0.1, "erode": 8.0, "smooth": 8.0}, "train": {"epochs": 50}}, seeds=(0, 1, 2)),
    "breast-ultrasound": Row("preset", ("breastmnist", "covid224"), preset="breast-ultrasound", seeds=(0, 1, 2)),
    "generic": Row("preset", tuple(DATASETS), preset="generic", seeds=(0, 1, 2)),
    # issue 29 item 4: the preset's image size is a choice; what 64 and 224 px in give beside 128
    "generic @64": Row("preset", ("covid224",), preset="generic", values={"data": {"image_size": 64}}),
    "generic @224": Row("preset", ("covid224",), preset="generic", values={"data": {"image_size": 224}}),
    # issue 29 item 5: the image statistics fused into generic's DAE, the candidate measured beside it;
    # seed 0 only: it lost to generic on LGG and PneumoniaMNIST (docs/detectors/statistics.md)
    "generic + stats (fused)": Row("preset", tuple(DATASETS), preset="generic", values={
        "detector": {"also": ["stats"], "fuse": ["dae", "stats"]}}),
}


def _method(name: str, detector: str, epochs: int, params: dict | None = None, detector_params: dict | None = None,
            train: dict | None = None, size: int = 64, datasets: tuple[str, ...] = tuple(DATASETS),
            seeds: tuple[int, ...] = (0,)) -> Row:
    """A seed method on ``datasets`` at ``size`` px (ResNet-18 width 32, batch 64): its own primary
    score (the one its paper scores with) and the embedding scores beside it."""
    return Row("method", datasets, {
        "data": {"image_size": size}, "encoder": {"width": 32},
        "method": {"name": name, "params": params or {}},
        "detector": {"name": detector, "params": detector_params or {}},
        "train": {"epochs": epochs, "batch_size": 64, **(train or {})},
    }, seeds=seeds)


METHOD_ROWS: dict[str, Row] = {
    "untrained encoder": _method("none", "mahalanobis", 0),
    "untrained, BatchNorm re-estimated": _method("none", "mahalanobis", 0, {"batchnorm": "reestimate"}),
    # the first stage of a random encoder (S_NND on its spatial mean): a texture statistic with no
    # training, the floor of any early-stage score (benchmarks/stage_probe.py); seconds a run, so 3 seeds
    "untrained, BatchNorm re-estimated, layer1 S_NND": _method("none", "nnd", 0, {"batchnorm": "reestimate"},
                                                               {"layer": "layer1"}, seeds=(0, 1, 2)),
    "contrastive + Mahalanobis": _method("contrastive", "mahalanobis", 30),
    "CCD + PaDiM": _method("ccd", "padim", 15),
    "PMSACL + PaDiM": _method("pmsacl", "padim", 15),
    # the paper's eq. (1) without its multi-centring term: at these budgets ℓ_ctr collapses the
    # embedding (docs/methods/pmsacl.md, "The multi-centring loss at CPU budgets")
    "PMSACL (no ctr) + PaDiM": _method("pmsacl", "padim", 15, {"weight_ctr": 0}),
    "CON2 (invert) + S_NND": _method("con2", "nnd", 30, {"context": "invert"}, {"contexts": ["invert"]},
                                     {"optimizer": "adamw", "weight_decay": 0.001}),
    "DINO + negatives + cosine": _method("dino_neg", "cosine", 60, train={"optimizer": "adamw", "lr": 2.5e-4}),
    # issue 29 item 3: the seed methods at 128 px on the two sets whose images are that large, each
    # beside its untrained floor at the same size (same settings as at 64 px otherwise)
    "untrained encoder @128": _method("none", "mahalanobis", 0, size=128, datasets=("covid224", "lgg")),
    "untrained, BatchNorm re-estimated, layer1 S_NND @128": _method(
        "none", "nnd", 0, {"batchnorm": "reestimate"}, {"layer": "layer1"}, size=128, datasets=("covid224", "lgg"),
        seeds=(0, 1, 2)),
    "CCD + PaDiM @128": _method("ccd", "padim", 15, size=128, datasets=("covid224", "lgg")),
    "contrastive + Mahalanobis @128": _method("contrastive", "mahalanobis", 30, size=128,
                                              datasets=("covid224", "lgg")),
    "PMSACL (no ctr) + PaDiM @128": _method("pmsacl", "padim", 15, {"weight_ctr": 0}, size=128,
                                            datasets=("covid224", "lgg")),
    "CON2 (invert) + S_NND @128": _method("con2", "nnd", 30, {"context": "invert"}, {"contexts": ["invert"]},
                                          {"optimizer": "adamw", "weight_decay": 0.001}, size=128,
                                          datasets=("covid224", "lgg", "pneumoniamnist")),
    # about twice the 64-px time (1,223-1,251 s a set on 2 cores), the last of the seed methods at 128 px
    "DINO + negatives + cosine @128": _method("dino_neg", "cosine", 60, train={"optimizer": "adamw", "lr": 2.5e-4},
                                              size=128, datasets=("covid224", "lgg")),
    # PMSACL's paper reports IGD (fine-tuned from the pre-trained encoder) as its best detector; at a
    # CPU budget IGD trains 10 epochs instead of its default 30 (30 took 36-58 min at 64 px)
    "PMSACL (no ctr) + IGD": _method("pmsacl", "igd", 15, {"weight_ctr": 0}, {"epochs": 10},
                                     datasets=("covid224", "lgg")),
    "untrained encoder + IGD": _method("none", "igd", 0, detector_params={"epochs": 10},
                                       datasets=("covid224", "lgg")),  # IGD's floor: what PMSACL adds
}
# issue 29 item 2: a chest-xray candidate, CON2 at 128 px (the best seed method there) in place of
# the preset's contrastive at 64 px, fused with the same DAE; both chest sets, one seed first
_CHEST = PRESETS["chest-xray"].values
CHEST_CANDIDATE = {**METHOD_ROWS["CON2 (invert) + S_NND @128"].values,
                   "detector": {"name": "mahalanobis", "fuse": ["mahalanobis", "dae"],
                                "also": [{"name": "nnd", "params": {"contexts": ["invert"]}}, "lh",
                                         _CHEST["detector"]["also"][-1]]},
                   "maps": _CHEST["maps"]}
METHOD_ROWS["chest-xray candidate: CON2 @128 + DAE (fused)"] = Row("method", ("covid224", "pneumoniamnist"),
                                                                    CHEST_CANDIDATE)
ROWS.update(METHOD_ROWS)
FEATURE_SCORES = ("mahalanobis", "nnd", "lh")
COLUMNS = {
    "lgg": ("image_auroc", "posmatched_auroc", "image_ap", *PIXEL_KEYS, "features", "seconds"),
    "pneumoniamnist": ("image_auroc", "image_ap", "features", "seconds"),
    "breastmnist": ("image_auroc", "image_ap", "features", "seconds"),
    "covid224": ("image_auroc", "image_ap", "features", "seconds"),
}


# -- trivial baselines ----------------------------------------------------------------------------
def trivial_scores(name: str, train: torch.Tensor, test: torch.Tensor) -> np.ndarray:
    """Test-image scores of a trivial baseline fitted on the training normals only."""
    if name == "raw-pixel NN":
        bank = train.flatten(1)
        return torch.cat([torch.cdist(b.flatten(1), bank).amin(1) for b in test.split(256)]).numpy()
    stat = (lambda x: x.flatten(1).mean(1)) if name == "mean intensity" else (lambda x: x.flatten(1).std(1))
    ref = stat(train)
    return ((stat(test) - ref.mean()) / ref.std()).abs().numpy()


def flair_map(images: torch.Tensor) -> torch.Tensor:
    """Issue 11's FLAIR row: channel 1 z-scored over its pixels > 0.05, blurred with σ = 2 px at 128 px."""
    flair = images[:, 1]
    inside = (flair > 0.05).float()
    n = inside.sum((1, 2), keepdim=True).clamp_min(1)
    mean = (flair * inside).sum((1, 2), keepdim=True) / n
    std = (((flair - mean) ** 2 * inside).sum((1, 2), keepdim=True) / n).sqrt().clamp_min(1e-6)
    return smooth_maps((flair - mean) / std, tuple(flair.shape[-2:]), sigma=2.0 * 256 / flair.shape[-1])


def flair_metrics(splits: DatasetSplits) -> tuple[dict[str, Any], np.ndarray]:
    """Image score = max of :func:`flair_map`; pixel threshold = 0.99 quantile of training-normal pixels."""
    test = splits.test
    maps = flair_map(test.images).numpy()
    labels = test.labels.numpy()
    masks = [m[0].numpy() if has else None for m, has in zip(test.masks, test.has_mask)]
    threshold = float(np.quantile(flair_map(splits.train.images).numpy(), 0.99))
    row = {"pixel_auroc": pixel_auroc(list(maps), masks, labels=labels.tolist()), "pro": pro_score(list(maps), masks)}
    row.update(segmentation_scores(list(maps), masks, threshold))
    row["oracle_dice"] = oracle_dice(list(maps), masks)[0]
    return row, maps.reshape(len(maps), -1).max(1)


def run_trivial(name: str, dataset: str) -> dict[str, Any]:
    spec = DATASETS[dataset]
    t0 = time.perf_counter()
    cfg = DataConfig(path=str(DATA / spec.path), image_size=spec.image_size, channels=spec.channels)
    splits = load_splits(cfg, seed=0)
    if name == "FLAIR map (issue 11)":
        row, scores = flair_metrics(splits)
    else:
        row, scores = {}, trivial_scores(name, splits.train.images, splits.test.images)
    labels = splits.test.labels.numpy()
    row.update(image_auroc=roc_auc_score(labels, scores), image_ap=average_precision_score(labels, scores))
    if dataset == "lgg":
        row["posmatched_auroc"] = matched_auroc(splits.test.ids, labels, scores)
    return row | {"seconds": time.perf_counter() - t0}


def matched_auroc(ids: list[str], labels: np.ndarray, scores: np.ndarray, min_frac: float = 0.3) -> float:
    """AUROC over all tumour slices and the test normals with brain_frac >= ``min_frac``."""
    import csv

    with open(LGG_MANIFEST) as fh:
        frac = {r["file"]: float(r["brain_frac"]) for r in csv.DictReader(fh)}
    keep = [i for i, image_id in enumerate(ids)
            if labels[i] == 1 or frac["/".join(Path(image_id).parts[-3:])] >= min_frac]
    return float(roc_auc_score(labels[keep], scores[keep]))


# -- runs through the product -------------------------------------------------------------------
def run_config(row: Row, dataset: str, seed: int) -> RunConfig:
    spec = DATASETS[dataset]
    values = {"data": {"path": str(DATA / spec.path), "channels": spec.channels},
              "train": {"seed": seed, "progress": False}}
    if row.preset is not None:
        return from_preset(row.preset, deep_merge(row.values, values))
    merged = {**row.values, "data": {**row.values.get("data", {}), **values["data"]},
              "train": {**row.values.get("train", {}), **values["train"]}}
    return RunConfig.model_validate(merged)


def run_pipeline(name: str, row: Row, dataset: str, seed: int, out: Path) -> dict[str, Any]:
    folder = run_path(out, dataset, name.replace(" ", "_").replace(",", ""), seed)
    t0 = time.perf_counter()
    metrics = train_run(run_config(row, dataset, seed), folder, overwrite=True)
    result = {k: metrics.get(k) for k in ("image_auroc", "image_ap", *PIXEL_KEYS)}
    result["scores"] = {name: v["image_auroc"] for name, v in metrics.get("scores", {}).items()}
    result["image_size"] = metrics["image_size"]
    result["seconds"] = time.perf_counter() - t0
    if dataset == "lgg":
        result["posmatched_auroc"] = position_matched_auroc(folder, LGG_MANIFEST)[metrics["detector"]]
    return result


# -- table ----------------------------------------------------------------------------------------
def features(runs: list[dict]) -> str:
    """Image AUROC of the embedding scores reported beside the primary one (Mahalanobis / S_NND /
    S_LH), mean over seeds; ``-`` for detectors without them."""
    cells = []
    for name in FEATURE_SCORES:
        values = [r["scores"][name] for r in runs if name in r.get("scores", {})]
        cells.append(f"{np.mean(values):.3f}" if values else "-")
    return "-" if all(c == "-" for c in cells) else " / ".join(cells)


def print_tables(rows: list[dict]) -> None:
    for dataset, columns in COLUMNS.items():
        group = [r for r in rows if r["dataset"] == dataset]
        if not group:
            continue
        print(f"\n{dataset}")
        print(f"| row | kind | seeds | px | {' | '.join(columns)} |")
        print("|---" * (len(columns) + 4) + "|")
        for name, row in ROWS.items():
            runs = [r for r in group if r["row"] == name]
            if not runs:
                continue
            cells = [features(runs) if c == "features" else mean_std([r[c] for r in runs if r.get(c) is not None])
                     for c in columns]
            cells = [c if col != "seconds" or c == "-" else f"{float(c.split()[0]):.0f}"
                     for c, col in zip(cells, columns)]
            size = runs[0].get("image_size", DATASETS[dataset].image_size)
            print(f"| {name} | {row.kind} | {len(runs)} | {size} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: each row's own)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-accuracy"))
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.jsonl")
    parser.add_argument("--print-only", action="store_true", help="print the table of OUT/results.jsonl")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA} (set MEDAD_DATA_DIR)")
    results = args.out / "results.jsonl"
    rows = load_rows(results, args.resume or args.print_only)
    if not args.print_only:
        done = {(r["dataset"], r["row"], r["seed"]) for r in rows}
        for name in args.rows:  # one row at a time over datasets and seeds, the cheap rows first
            row = ROWS[name]
            for seed in [s for s in row.seeds if args.seeds is None or s in args.seeds]:
                for dataset in [d for d in row.datasets if d in args.datasets]:
                    if (dataset, name, seed) in done:
                        continue
                    result = (run_trivial(name, dataset) if row.kind == "trivial"
                              else run_pipeline(name, row, dataset, seed, args.out))
                    record = {"dataset": dataset, "row": name, "seed": seed, **result}
                    rows.append(record)
                    append_row(results, record)
    print_tables(rows)


if __name__ == "__main__":
    main()
