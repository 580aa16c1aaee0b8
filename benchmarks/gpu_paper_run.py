"""Seed methods at their papers' budget on one GPU, within a wall-time limit, beside the trivial rows.

Each method runs as ``medad train --budget paper`` (image size, batch, optimiser, learning rate and
knobs of its paper: medad.budgets) on a dev set, with as many epochs as its paper gives or as fit
in the time left before ``--deadline`` (estimated from its measured training speed,
``benchmarks/gpu_speed.py --json``), checkpointing only at the end. The trivial baselines of the
same split (mean intensity, intensity std, raw-pixel nearest neighbour: benchmarks/accuracy.py)
are computed here too, so that the printed table holds them beside every run.

    python benchmarks/gpu_paper_run.py --data .gpu/chest_xray_covid_224 --speed speed.json \\
        --methods contrastive con2 --deadline 1733300000 --out /tmp/paper

Prints the table and appends one JSON line per row to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from medad.budgets import budget_overrides
from medad.config import DataConfig, resolve_config
from medad.data.loading import load_splits
from medad.pipeline import train_run

from accuracy import trivial_scores  # benchmarks/ is on sys.path

OVERHEAD_S = 60  # loading, scoring, the report: outside the epochs


def trivial_rows(data: Path, size: int) -> list[dict]:
    splits = load_splits(DataConfig(path=str(data), image_size=size, channels=1), seed=0)
    labels = splits.test.labels.numpy()
    return [{"row": name, "image_auroc": roc_auc_score(labels, trivial_scores(name, splits.train.images,
                                                                               splits.test.images))}
            for name in ("mean intensity", "intensity std", "raw-pixel NN")]


def epochs_that_fit(method: str, seconds: float, n_train: int, speed: dict) -> int:
    """The paper's epochs, or fewer: as many as ``seconds`` hold at the measured images/s."""
    paper = budget_overrides(method, "mahalanobis")["train.epochs"]
    measured = speed.get("rows", {}).get(method, {}).get("images_per_second")
    if not measured:
        return min(paper, 10)
    return max(1, min(paper, int((seconds - OVERHEAD_S) * measured / n_train)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["contrastive", "con2"])
    parser.add_argument("--speed", type=Path, help="gpu_speed.py --json output (images/s per method)")
    parser.add_argument("--deadline", type=float, required=True, help="Unix time by which the last run ends")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-train", type=int, default=None, help="fewer training normals (a dry run on a CPU)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    speed = json.loads(args.speed.read_text()) if args.speed and args.speed.is_file() else {}
    results = args.out / "results.jsonl"
    rows = trivial_rows(args.data, 64)  # raw-pixel NN at 64 px, as the data set's README
    n_train = args.max_train or len(list((args.data / "train" / "good").glob("*.png")))
    for i, method in enumerate(args.methods):
        left = (args.deadline - time.time()) / (len(args.methods) - i)  # share the time left evenly
        if left < OVERHEAD_S + 30:
            rows.append({"row": f"{method} --budget paper", "skipped": f"{left:.0f} s left"})
            continue
        epochs = epochs_that_fit(method, left, int(n_train * 0.9), speed)
        cfg = resolve_config(budget="paper", overrides={
            "data.path": str(args.data), "data.channels": 1, "method.name": method, "train.epochs": epochs,
            "train.device": args.device, "train.checkpoint_every": epochs, "train.progress": False,
            "data.max_train": args.max_train})
        t0 = time.time()
        metrics = train_run(cfg, args.out / method, overwrite=True)
        rows.append({"row": f"{method} --budget paper", "epochs": epochs, "paper_epochs":
                     budget_overrides(method, "mahalanobis")["train.epochs"], "image_auroc": metrics.get("image_auroc"),
                     "detector": cfg.detector.name, "image_size": cfg.data.image_size, "seconds": time.time() - t0,
                     "scores": {k: v for k, v in metrics.items() if "auroc" in k}})
    with results.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"\n{'row':<32} {'image AUROC':>11}  details")
    for row in rows:
        auroc = row.get("image_auroc")
        details = {k: v for k, v in row.items() if k not in ("row", "image_auroc")}
        print(f"{row['row']:<32} {auroc if auroc is None else format(auroc, '.3f'):>11}  {details}")


if __name__ == "__main__":
    main()
