"""Label-free ways of combining two scores of one run, compared offline on its saved scores.

For every run folder given (by default the ``generic + stats (fused)`` runs of
``benchmarks/accuracy.py``), reads ``predictions.npz`` (every score of every validation normal and
test image), standardises each of ``--scores`` on the validation normals (z = (s − μ) / σ, as
:mod:`medad.detectors.fusion` does) and prints the test image AUROC of each member alone and of:

* ``mean``: (z_a + z_b) / 2, medad's fusion (PyOD's average of standardised scores);
* ``max``: max(z_a, z_b) (PyOD's maximisation);
* ``hingeQ``: z_a + max(0, z_b − the Q quantile of z_b on the validation normals): the second score
  counts only where it lies beyond (almost) every normal.

Nothing but the validation normals sets a rule's constants; the labels only measure. Usage::

    .venv/bin/python benchmarks/fusion_rules.py                        # the accuracy suite's runs
    .venv/bin/python benchmarks/fusion_rules.py RUN ... --scores dae stats
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def rules(z_a: np.ndarray, z_b: np.ndarray, val: np.ndarray) -> dict[str, np.ndarray]:
    """Every combination rule of the module docstring, on standardised scores."""
    out = {"mean": (z_a + z_b) / 2, "max": np.maximum(z_a, z_b)}
    for q in (0.95, 0.99, 1.0):
        out[f"hinge{q:g}"] = z_a + np.maximum(z_b - np.quantile(z_b[val], q), 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--scores", nargs=2, default=["dae", "stats"], metavar=("A", "B"))
    args = parser.parse_args()
    runs = args.runs or sorted(Path(p) for p in glob.glob("runs/bench-accuracy/*generic_+_stats*"))
    columns = [*args.scores, *rules(np.zeros(2), np.zeros(2), np.ones(2, bool))]
    print("| run | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for run in runs:
        saved = np.load(run / "predictions.npz")
        names, scores = list(saved["score_names"]), saved["all_scores"]
        val, test = saved["role"] == "val", saved["role"] == "test"
        z = []
        for name in args.scores:
            s = scores[:, names.index(name)]
            z.append((s - s[val].mean()) / s[val].std())
        combined = {args.scores[0]: z[0], args.scores[1]: z[1], **rules(z[0], z[1], val)}
        labels = saved["label"][test]
        print(f"| {run.name} | " + " | ".join(f"{roc_auc_score(labels, c[test]):.3f}" for c in combined.values())
              + " |")


if __name__ == "__main__":
    main()
