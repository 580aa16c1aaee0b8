"""``medad predict``: score folders of new images with a saved model, in batches.

Files are found recursively under every input folder (a DICOM export ``study/series/*.dcm``
included), read and scored ``batch_size`` at a time, and written as they are scored, so memory
stays bounded and a progress bar moves. Only the primary score is computed unless
``scores="all"``. ``scores.csv`` has the path, the primary score, the label at the model's
label-free threshold, the calibrated ``normal_quantile`` (share of validation normals scoring
lower, :mod:`medad.evaluation.calibration`) and the scores computed. Heatmaps (spatial scores)
go to ``heatmaps/`` under the file's path relative to its input folder, so that equal file names
in different folders do not overwrite each other, with the colour scale fixed at fit time from
the validation normals (the same image looks the same whatever else is predicted with it) and a
colour bar.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medad.data.folder import FileItem, load_files
from medad.data.readers import list_image_files
from medad.evaluation.calibration import normal_map_range, normal_quantile
from medad.model import AnomalyDetector
from medad.progress import progress_bar
from medad.report.figures import HeatmapWriter

log = logging.getLogger("medad")


def output_names(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Every image file under ``inputs`` with its output name: the path relative to its input
    folder, under that folder's name (``name_2``, ... when two input folders share a name), or
    the file name for a file given directly (``stem_2`` ... on a clash).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ("a/good", "b/good"):
    ...     (root / sub).mkdir(parents=True); _ = (root / sub / "x.png").write_bytes(b"")
    >>> [str(name) for _, name in output_names([root / "a" / "good", root / "b" / "good"])]
    ['good/x.png', 'good_2/x.png']
    """
    used: set[Path] = set()
    out: list[tuple[Path, Path]] = []

    def unique(name: Path) -> Path:
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = name.with_name(f"{name.stem}_{k}{name.suffix}")
        used.add(candidate)
        return candidate

    for given in map(Path, inputs):
        if given.is_dir():
            top = unique(Path(given.resolve().name or "input"))
            out.extend((f, top / f.relative_to(given)) for f in list_image_files(given, recursive=True))
        else:
            out.append((given, unique(Path(given.name))))
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_run(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    scores: Literal["primary", "all"] = "primary",
    device: str | None = None,
    heatmaps: bool = True,
    progress: bool | None = None,
) -> Path:
    """Score the images under ``inputs`` with the model in ``model_dir`` (a run or model folder, on
    ``device``, default the model's own; or an ``.onnx`` file from ``medad export``, run by
    onnxruntime on the CPU); returns the path of ``scores.csv``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if Path(model_dir).suffix == ".onnx":  # an exported graph (`medad export`): its primary score only
        from medad.export import OnnxModel

        model: AnomalyDetector | OnnxModel = OnnxModel(model_dir)
        if scores == "all":
            log.warning("an exported model holds its primary score only: --scores all gives %r", model.primary)
    else:
        model = AnomalyDetector.load(model_dir, device)
    cfg = model.config.data
    files = output_names(inputs)
    names = list(model.detectors_) if scores == "all" else [model.primary]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    painter: HeatmapWriter | None = None
    scored = skipped = 0
    with open(out / "scores.csv", "w", newline="") as fh, progress_bar(progress) as bar:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "label", "normal_quantile", *names])
        task = bar.add_task("predict", total=len(files), info="")
        for chunk in _batches(files, batch_size):
            loaded = load_files([FileItem(f) for f, _ in chunk], image_size=cfg.image_size, channels=cfg.channels,
                                nifti_slices=cfg.nifti_slices, on_error=cfg.on_error)
            bar.advance(task, len(chunk))
            skipped += len(loaded.skipped)
            images = loaded.images
            if len(images) == 0:
                continue
            outputs = model.score_all(images, names)
            primary = outputs[model.primary]
            values = primary.scores.cpu().numpy()
            calibrated = normal_quantile(values, model.val_scores_) if model.val_scores_ else None
            for i, image_id in enumerate(images.ids):
                label = "" if model.threshold_ is None else int(values[i] > model.threshold_)
                quantile = "" if calibrated is None else f"{calibrated[i]:.4f}"
                writer.writerow([image_id, f"{values[i]:.6g}", label, quantile,
                                 *(f"{o.scores[i]:.6g}" for o in outputs.values())])
            fh.flush()
            if heatmaps and primary.maps is not None:
                maps = primary.maps.cpu().numpy()
                if painter is None:
                    if model.map_range_ is None:  # a model saved before the colour scale was stored
                        log.warning("this model stores no heatmap colour scale (saved by an older medad): the "
                                    "scale of every heatmap is taken from the first batch; train again to fix it")
                    painter = HeatmapWriter(*(model.map_range_ or normal_map_range(maps)))
                _save_heatmaps(out / "heatmaps", images.ids, images.images, maps,
                               {str(f): name for f, name in chunk}, painter)
            scored += len(images)
    if scored == 0:
        raise ValueError(f"none of the {len(files)} given images could be read")
    if skipped:
        log.warning("%d of %d files could not be read and were skipped (see the warnings above)", skipped, len(files))
    return out / "scores.csv"


def _save_heatmaps(folder: Path, ids: Sequence[str], images: torch.Tensor, maps: np.ndarray,
                   names: dict[str, Path], painter: HeatmapWriter) -> None:
    """One PNG per image at ``folder / name`` (``name_<slice>`` for the slices of a volume)."""
    for i, image_id in enumerate(ids):
        source, _, slice_no = image_id.partition("#")
        name = names[source]
        stem = name.stem + (f"_{slice_no}" if slice_no else "")
        path = folder / name.with_name(f"{stem}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (images[i].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        painter.save(pixels, maps[i], path)
