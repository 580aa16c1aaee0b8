"""Does DDAD's ASR-Net have anything to learn from? The raw maps on its synthetic anomalies.

The ASR-Net is trained to turn the raw maps [A_intra, A_inter] of foreign-patch-interpolation
(FPI) anomalies into their patch masks. That only works if the raw maps respond inside the patch.
For each saved DDAD run (a run folder of ``benchmarks/reconstruction.py``) this prints:

* the mean of the refined map over training normals, validation normals and the test normal and
  abnormal images (a near-constant refined map means the ASR-Net learned little);
* the Spearman correlation, over the test images (no labels), between the image mean of each raw
  map and that of the refined map: what the refined image score follows;
* the label-free pixel AUROCs of the raw and refined maps against the FPI masks of validation
  normals (``DDADDetector.diagnostics``);
* for reference, the pixel AUROC of the patch-position prior alone (how often each pixel falls
  in an FPI patch), i.e. what a map that ignores the image can reach;
* the same for a white square pasted with the FPI geometry (an anomaly no normal image has):
  A_intra against the NDM's plain reconstruction error.

With ``--ensemble-epochs E ...`` it also trains fresh NDM ensembles (the run's settings, no pool, no
ASR-Net) for E epochs and prints their FPI AUROC of A_intra, to see whether longer training (the
paper uses 250 epochs) makes the ensemble disagree inside the patches.

    .venv/bin/python benchmarks/ddad_asr_signal.py runs/bench-reconstruction/pneumoniamnist-ddad-R_dual-ar0.2-s0
    .venv/bin/python benchmarks/ddad_asr_signal.py RUN --ensemble-epochs 50 100 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from medad.augment.fpi import foreign_patch_interpolation, patch_masks
from medad.data.loading import load_splits, load_test_split
from medad.detectors.ddad import DDADDetector
from medad.detectors.registry import build_detector
from medad.evaluation.metrics import pixel_auroc
from medad.model import AnomalyDetector


@torch.no_grad()
def refined_means(ddad: DDADDetector, groups: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of the refined (or, without ASR-Net, the used raw) map over each group of images."""
    return {name: float(torch.cat([ddad.anomaly_map(b) for b in x.split(64)]).mean()) for name, x in groups.items()}


@torch.no_grad()
def follows(ddad: DDADDetector, x: torch.Tensor) -> dict[str, float]:
    """Spearman correlation of the image means of each raw map with the image mean of the map."""
    maps = torch.cat([ddad.raw_maps(b) for b in x.split(64)])
    raw = maps.mean((2, 3))
    used = torch.cat([ddad.map_from_raw(m) for m in maps.split(64)]).mean((1, 2))
    names = ["A_intra", "A_inter"][: raw.shape[1]]
    return {name: float(spearmanr(raw[:, i].numpy(), used.numpy()).statistic) for i, name in enumerate(names)}


@torch.no_grad()
def white_square(ddad: DDADDetector, val: torch.Tensor) -> dict[str, float]:
    """Pixel AUROC of A_intra and of the NDM reconstruction error for white FPI-shaped squares."""
    x = val[:512]
    synthetic = foreign_patch_interpolation(x, torch.ones_like(x), generator=torch.Generator().manual_seed(0))
    masks = list(synthetic.masks.numpy())
    intra, error = [], []
    for batch in synthetic.images.split(64):
        intra.append(ddad.raw_maps(batch)[:, 0])
        recs = torch.stack([net(batch).reconstruction for net in ddad.ndm])
        error.append((recs.mean(0) - batch).pow(2).mean(1))
    return {"white_intra": pixel_auroc(torch.cat(intra).numpy(), masks),
            "white_rec_error": pixel_auroc(torch.cat(error).numpy(), masks)}


def prior_auroc(size: int, n: int = 512) -> float:
    """Pixel AUROC against ``n`` FPI masks of the per-pixel patch frequency (20000 other masks)."""
    prior = patch_masks(20000, size, torch.Generator().manual_seed(1)).mean(0)
    masks = patch_masks(n, size, torch.Generator().manual_seed(2))
    return pixel_auroc(prior.expand(n, size, size).numpy(), list(masks.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of DDAD runs")
    parser.add_argument("--ensemble-epochs", type=int, nargs="*", default=[],
                        help="also train fresh NDM ensembles for these epochs and report their FPI AUROC")
    args = parser.parse_args()
    for run in args.runs:
        model = AnomalyDetector.load(run / "model")
        ddad = model.detectors_["ddad"]
        splits = load_splits(model.config.data, seed=model.config.train.seed)
        test = load_test_split(model.config.data)
        train, val, x_test = model.prepare(splits.train), model.prepare(splits.val), model.prepare(test)
        groups = {"train": train, "val": val, "test_normal": x_test[test.labels == 0],
                  "test_abnormal": x_test[test.labels == 1]}
        print(f"\n{run}")
        print("  mean of the map:", {k: round(v, 4) for k, v in refined_means(ddad, groups).items()})
        print("  Spearman of the map's image mean with the raw maps' (test images):",
              {k: round(v, 3) for k, v in follows(ddad, x_test).items()})
        print("  FPI pixel AUROC on validation normals:", {k: round(v, 3) for k, v in ddad.diagnostics(val).items()})
        print(f"  patch-position prior alone: {prior_auroc(val.shape[-1]):.3f}")
        print("  white squares:", {k: round(v, 3) for k, v in white_square(ddad, val).items()}, flush=True)
        for epochs in args.ensemble_epochs:
            params = {**model.config.detector.params, "variant": "intra", "refine": False, "epochs": epochs}
            t0 = time.perf_counter()
            fresh = build_detector("ddad", params).fit(train, None)
            found = fresh.diagnostics(val)["fpi_auroc_intra"]
            print(f"  fresh NDM, {epochs} epochs: FPI pixel AUROC of A_intra {found:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
