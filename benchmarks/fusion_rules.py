"""Label-free ways of combining two scores of one run, compared offline on its saved scores.

For every run folder given (by default the ``generic + stats (fused)`` runs of
``benchmarks/accuracy.py``), reads ``predictions.npz`` (every score of every validation normal and
test image), standardises each of ``--scores`` on the validation normals (z = (s − μ) / σ, with
:func:`medad.detectors.fusion.fit_fusion`, as the product does) and prints the test image AUROC
of each member alone and of:

* ``mean``: (z_a + z_b) / 2, medad's fusion (PyOD's average of standardised scores);
* ``max``: max(z_a, z_b) (PyOD's maximisation);
* ``hingeQ``: z_a + max(0, z_b − the Q quantile of z_b on the validation normals): the second score
  counts only where it lies beyond (almost) every normal.

With more than two ``--scores`` each rule takes them all (the mean and max of every z; the hinge
of each later score added to the first).

Nothing but the validation normals sets a rule's constants; the labels only measure. Usage::

    .venv/bin/python benchmarks/fusion_rules.py                        # the accuracy suite's runs
    .venv/bin/python benchmarks/fusion_rules.py RUN ... --scores dae stats
    .venv/bin/python benchmarks/fusion_rules.py RUN ... --scores mahalanobis lh dae
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.detectors.fusion import fit_fusion


def rules(z: list[np.ndarray], val: np.ndarray) -> dict[str, np.ndarray]:
    """Every combination rule of the module docstring, on standardised scores ``z``.

    >>> rules([np.array([0.0, 2.0]), np.array([1.0, 4.0])], np.array([True, False]))["mean"]
    array([0.5, 3. ])
    """
    out = {"mean": np.mean(z, axis=0), "max": np.max(z, axis=0)}
    for q in (0.95, 0.99, 1.0):
        out[f"hinge{q:g}"] = z[0] + sum(np.maximum(z_b - np.quantile(z_b[val], q), 0) for z_b in z[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--scores", nargs="+", default=["dae", "stats"], help="two or more score names")
    args = parser.parse_args()
    runs = args.runs or sorted(Path(p) for p in glob.glob("runs/bench-accuracy/*generic_+_stats*"))
    if len(args.scores) < 2:
        parser.error("--scores needs at least two score names")
    columns = [*args.scores, *rules([np.zeros(2)] * 2, np.ones(2, bool))]
    print("| run | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for run in runs:
        saved = np.load(run / "predictions.npz")
        names, scores = list(saved["score_names"]), saved["all_scores"]
        val, test = saved["role"] == "val", saved["role"] == "test"
        columns_of = {name: scores[:, names.index(name)] for name in args.scores}
        stats = fit_fusion({name: torch.from_numpy(s[val]) for name, s in columns_of.items()})
        z = [(s - stats[name][0]) / stats[name][1] for name, s in columns_of.items()]
        combined = {**dict(zip(args.scores, z)), **rules(z, val)}
        labels = saved["label"][test]
        print(f"| {run.name} | " + " | ".join(f"{roc_auc_score(labels, c[test]):.3f}" for c in combined.values())
              + " |")


if __name__ == "__main__":
    main()
