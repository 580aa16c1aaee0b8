"""The files of a run folder, named in one place.

A training run writes::

    config.yaml        resolved config; `medad train --config RUN/config.yaml` repeats the run
    manifest.csv       every file used, its role and SHA-256
    model/             model.pt (tensors, weights_only) + model.json (metadata, threshold)
    checkpoints/       last.pt + last.json, the resumable training state (best.pt, networks/)
    figures/           the method's example figure(s), shown in the report
    tensorboard/       with `--log tensorboard`: the experiment log (event files; medad.experiment_log)
    metrics.json       image (and pixel) metrics of every score, threshold and its rule
    predictions.npz    the per-image result records the report is drawn from
    report.html        self-contained report
    eval/<data>/       `medad evaluate` of the run's model on another dataset (an evaluation folder)

An evaluation folder holds the last three; its metrics.json names the model it came from
(``"model"``, relative to the folder), so that ``medad report`` finds the training history
without guessing.

>>> run = RunFolder.of_model("runs/lgg/model")
>>> run.root.as_posix(), run.checkpoint.as_posix(), run.evaluation("lgg_brain_mri_dev").root.as_posix()
('runs/lgg', 'runs/lgg/checkpoints/last.pt', 'runs/lgg/eval/lgg_brain_mri_dev')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """Paths of the run (or evaluation) folder ``root``."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_model(cls, model: str | Path) -> RunFolder:
        """The run folder of a saved model given as the run folder or its ``model/`` folder."""
        path = Path(model)
        return cls(path.parent if path.name == "model" and not (path / "model").is_dir() else path)

    config = property(lambda self: self.root / "config.yaml")
    manifest = property(lambda self: self.root / "manifest.csv")
    model = property(lambda self: self.root / "model")
    checkpoint = property(lambda self: self.root / "checkpoints" / "last.pt")
    figures = property(lambda self: self.root / "figures")
    tensorboard = property(lambda self: self.root / "tensorboard")
    metrics = property(lambda self: self.root / "metrics.json")
    predictions = property(lambda self: self.root / "predictions.npz")
    report = property(lambda self: self.root / "report.html")

    def holds_run(self) -> bool:
        """True once a training has written its model or a checkpoint here."""
        return self.model.exists() or self.checkpoint.parent.exists()

    def evaluation_files(self) -> tuple[Path, Path, Path]:
        """What an evaluation writes here, in the order it writes them (metrics.json last)."""
        return self.predictions, self.report, self.metrics

    def evaluation(self, data: str | Path) -> RunFolder:
        """Where ``medad evaluate`` of this run's model on ``data`` goes by default."""
        return RunFolder(self.root / "eval" / Path(data).name)

    def link_to(self, model_dir: str | Path) -> str:
        """``model_dir`` relative to this folder, as recorded in metrics.json."""
        return Path(os.path.relpath(Path(model_dir).resolve(), self.root.resolve())).as_posix()

    def model_of(self, metrics: dict) -> Path | None:
        """The model folder this folder's ``metrics`` came from (its ``"model"`` entry, else the
        run's own ``model/``), or None when there is none."""
        candidate = self.root / metrics["model"] if metrics.get("model") else self.model
        return candidate if (candidate / "model.json").is_file() else None
