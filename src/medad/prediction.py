"""``medad predict``: score folders of new images with a saved model, in batches.

Files are found recursively under every input folder (a DICOM export ``study/series/*.dcm``
included), read and scored ``batch_size`` at a time, and written as they are scored, so memory
stays bounded and a progress bar moves. Only the primary score is computed unless
``scores="all"``. ``scores.csv`` has the path, the primary score, the label at the model's
label-free threshold, the calibrated ``normal_quantile`` (share of validation normals scoring
lower, :mod:`medad.evaluation.calibration`), the scores computed and, when DICOM files are among
the inputs, their PatientID, StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID. Heatmaps (spatial scores)
go to ``heatmaps/`` under the file's path relative to its input folder, so that equal file names
in different folders do not overwrite each other, with the colour scale fixed at fit time from
the validation normals (the same image looks the same whatever else is predicted with it) and a
colour bar. With ``save_maps`` the raw maps go to ``maps/`` (``.npy``) and the binary lesion
masks at the model's pixel threshold to ``masks/`` (PNG), under the same names; the slices of a
NIfTI input are also written back as one volume per input file (``maps/<name>.nii.gz`` and
``masks/<name>.nii.gz``, in the input's shape and affine: :mod:`medad.data.writers`). With
``dicom_out`` every DICOM input also gets a DICOM Segmentation of its lesion mask and a Secondary
Capture of its heatmap overlay, in its own Rows x Columns and study (``dicom/<name>.seg.dcm``,
``dicom/<name>.sc.dcm``: :mod:`medad.data.dicom_outputs`).

No file is scored twice: a file found again (an input given twice or inside another, a link to a
file or folder already found, a folder linking to itself) is skipped with a warning. The output
folder must be empty unless ``overwrite``; then the files an earlier ``medad predict`` wrote there
are deleted first (:mod:`medad.outputs`), so two runs never mix, and other files are kept.
``scores.csv`` is written under a temporary name and renamed once every image is scored: it
exists only complete. An interruption (Ctrl-C, SIGTERM) or a write error (a full disk: one line
naming the folder) leaves no ``scores.csv``, only the heatmaps written so far, which
``--overwrite`` deletes.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

from medad.atomic import WriteError, atomic_file
from medad.data.dicom_outputs import SC_SUFFIX, SEG_SUFFIX, DicomOutputError, DicomOutputs, OutputSeries, \
    read_source, write_dicom_outputs
from medad.data.folder import FileItem
from medad.data.imageset import ImageSet
from medad.data.readers import (
    DICOM_IDENTIFIERS,
    ImageReadError,
    dicom_identifiers,
    is_dicom,
    list_image_files,
    read_images,
    stem_of,
)
from medad.data.writers import resize_map, slice_index, write_nifti_maps
from medad.detectors.base import DetectorOutput
from medad.evaluation.calibration import normal_map_range, normal_quantile
from medad.model import AnomalyDetector
from medad.outputs import OutputFolder
from medad.progress import progress_bar
from medad.report.figures import HeatmapWriter, to_uint8
from medad.runlock import RunLock

if TYPE_CHECKING:
    from medad.export import OnnxModel

log = logging.getLogger("medad")


def output_names(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Every image file under ``inputs`` with its output name: the path relative to its input
    folder, under that folder's name (``name_2``, ... when two input folders share a name), or
    the file name for a file given directly (``stem_2`` ... on a clash). A file found again (the
    same resolved path) is left out, with a warning.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ("a/good", "b/good"):
    ...     (root / sub).mkdir(parents=True); _ = (root / sub / "x.png").write_bytes(b"")
    >>> [str(name) for _, name in output_names([root / "a" / "good", root / "b" / "good", root / "a"])]
    ['good/x.png', 'good_2/x.png']
    """
    used: set[Path] = set()
    found: dict[Path, Path] = {}  # resolved file -> the path it was first found by
    again: list[str] = []
    out: list[tuple[Path, Path]] = []

    def unique(name: Path) -> Path:
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = name.with_name(f"{name.stem}_{k}{name.suffix}")
        used.add(candidate)
        return candidate

    def add(file: Path, name: Path) -> None:
        first = found.get(file.resolve())
        if first is None:
            found[file.resolve()] = file
            out.append((file, unique(name)))
        else:
            again.append(str(file) if file == first else f"{file} (= {first})")

    for given in map(Path, inputs):
        if given.is_dir():
            files = list_image_files(given, recursive=True)
            top = unique(Path(given.resolve().name or "input"))
            for f in files:
                add(f, top / f.relative_to(given))
        else:
            add(given, Path(given.name))
    if again:
        log.warning("skipping %d files found before (an input given twice or inside another, or a link): %s%s",
                    len(again), ", ".join(again[:5]), f" and {len(again) - 5} more" if len(again) > 5 else "")
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_model(model: str | Path, device: str | None = None) -> AnomalyDetector | OnnxModel:
    """The model of ``medad predict --model`` and ``medad serve --model``: a run or model folder
    (on ``device``, default the model's own), or an ``.onnx`` file from ``medad export`` (its
    primary score only, run by onnxruntime on the CPU)."""
    if Path(model).suffix.lower() == ".onnx":
        from medad.export import OnnxModel

        if device not in (None, "cpu", "auto"):
            log.warning("an exported model runs on the CPU (onnxruntime): ignoring device %r", device)
        return OnnxModel(model)
    return AnomalyDetector.load(model, device)


def predict_run(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    scores: Literal["primary", "all"] = "primary",
    device: str | None = None,
    heatmaps: bool = True,
    save_maps: bool = False,
    dicom_out: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Score the images under ``inputs`` with the model in ``model_dir`` (a run or model folder, on
    ``device``, default the model's own; or an ``.onnx`` file from ``medad export``, run by
    onnxruntime on the CPU) into ``out_dir`` (empty, or ``overwrite``: see the module docstring);
    returns the path of ``scores.csv``. ``dicom_out``: a DICOM SEG and SC per DICOM input
    (:func:`_save_dicom`); the model must give anomaly maps and a pixel threshold."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = load_model(model_dir, device)
    if scores == "all" and not isinstance(model, AnomalyDetector):
        log.warning("an exported model holds its primary score only: --scores all gives %r", model.primary)
    names = model.fitted_scores if scores == "all" else [model.primary]
    if dicom_out and model.pixel_threshold_ is None:
        raise ValueError(f"--dicom-out writes lesion masks: it needs a model whose primary score ({model.primary}) "
                         f"gives anomaly maps and a pixel threshold (e.g. --detector padim); {model_dir} has none")
    out = Path(out_dir)
    with RunLock(out), OutputFolder(out, "predict") as folder:
        folder.claim(overwrite)
        files = output_names(inputs)
        with _writing_to(out):
            return _write_predictions(model, files, folder, names, batch_size=batch_size, heatmaps=heatmaps,
                                      save_maps=save_maps, dicom_out=dicom_out, progress=progress)


@contextmanager
def _writing_to(out: Path) -> Iterator[None]:
    """An ``OSError`` of the block (a full disk, a read-only or vanished folder; reading errors are
    :class:`~medad.data.readers.ImageReadError`) as one line naming ``out``."""
    try:
        yield
    except WriteError:  # names its file already (scores.csv)
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the predictions to {out}: {exc.strerror or exc}; no scores.csv "
                                 "was written") from exc


class Scorer:
    """A loaded model (or exported graph) scoring batches of images read by its preprocessor: the
    one scoring path of ``medad predict`` and ``medad serve``. ``names``: the scores to compute
    (default: the primary one). The heatmap colour scale is the model's (fixed at fit time); a
    model saved without one gets the first batch's, with a warning."""

    def __init__(self, model: AnomalyDetector | OnnxModel, names: Sequence[str] | None = None):
        self.model = model
        self.names = list(names) if names else [model.primary]
        self._painter: HeatmapWriter | None = None

    def __call__(self, images: ImageSet) -> Scored:
        """Score ``images`` (as :meth:`~medad.data.preprocessor.Preprocessor.read_files` gives them)
        in one model call."""
        model = self.model
        outputs = model.score_all(images, self.names)
        primary = outputs[model.primary]
        scores = primary.scores.cpu().numpy()
        return Scored(
            scorer=self, images=images, outputs=outputs, scores=scores,
            calibrated=normal_quantile(scores, model.val_scores_) if model.val_scores_ else None,
            abnormal=None if model.threshold_ is None else scores > model.threshold_,
            maps=None if primary.maps is None else primary.maps.cpu().numpy(),
        )

    def painter(self, maps: np.ndarray) -> HeatmapWriter:
        """The heatmap painter on the model's colour scale (or, for an older model, ``maps``')."""
        if self._painter is None:
            if self.model.map_range_ is None:  # a model saved before the colour scale was stored
                log.warning("this model stores no heatmap colour scale (saved by an older medad): the "
                            "scale of every heatmap is taken from the first batch; train again to fix it")
            self._painter = HeatmapWriter(*(self.model.map_range_ or normal_map_range(maps)))
        return self._painter


@dataclass
class Scored:
    """One batch scored by a :class:`Scorer`: the images as read, every score computed, and of the
    primary score its values, calibrated values (share of validation normals scoring lower; None
    without validation scores), decisions at the model's threshold (None without one) and maps
    (None for an image-level score)."""

    scorer: Scorer = field(repr=False)
    images: ImageSet
    outputs: dict[str, DetectorOutput]
    scores: np.ndarray
    calibrated: np.ndarray | None
    abnormal: np.ndarray | None
    maps: np.ndarray | None

    @cached_property
    def masks(self) -> np.ndarray | None:
        """The binary lesion masks at the model's pixel threshold, uint8 ``[N, H, W]`` 0 / 255
        (None without maps or a pixel threshold)."""
        threshold = self.scorer.model.pixel_threshold_
        if self.maps is None or threshold is None:
            return None
        return ((self.maps > threshold) * 255).astype(np.uint8)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as the model reads it (before intensity scaling), uint8 ``[C, H, W]``."""
        return to_uint8(self.images.images[i])

    def heatmap_rgba(self, i: int) -> np.ndarray:
        """The colour overlay of image ``i``'s map at the image's size, uint8 ``[H, W, 4]``
        (:meth:`~medad.report.figures.HeatmapWriter.rgba`); needs maps."""
        assert self.maps is not None
        return self.scorer.painter(self.maps).rgba(self.maps[i], *self.images.images.shape[-2:])

    def write_dicom(self, i: int, source: str | Path, out_dir: Path, stem: str,
                    series: dict[str, OutputSeries]) -> DicomOutputs:
        """The DICOM outputs of image ``i``, read from the single-frame DICOM file ``source``:
        ``out_dir/<stem>.seg.dcm`` (the lesion mask) and ``.sc.dcm`` (the heatmap overlay), in the
        source's geometry: the map resized to its Rows x Columns as for a NIfTI input
        (:func:`resize_map`), the mask that map above the pixel threshold, the overlay the heatmap
        blended over the image as read at its own size (:meth:`HeatmapWriter.overlay`). Filed in
        ``series[<source's Series UID>]`` (a new pair of series for a new source series). Needs
        maps and a pixel threshold; :class:`DicomOutputError` / :class:`ImageReadError` for a
        source that cannot get them."""
        threshold = self.scorer.model.pixel_threshold_
        assert self.maps is not None and threshold is not None
        header = read_source(source)
        (_, pixels), = read_images(source, self.images.images.shape[1])
        source_map = resize_map(self.maps[i], int(header.Rows), int(header.Columns))
        overlay = self.scorer.painter(self.maps).overlay(to_uint8(torch.from_numpy(pixels)), source_map)
        return write_dicom_outputs(header, source_map > threshold, overlay, out_dir, stem,
                                   series=series.setdefault(str(header.SeriesInstanceUID), OutputSeries.new()))

    def save_heatmap(self, i: int, path: Path) -> Path:
        """Image ``i`` under its overlay with a colour bar (``medad predict``'s heatmap); needs maps."""
        assert self.maps is not None
        return self.scorer.painter(self.maps).save(self.image(i), self.maps[i], path)


def _write_predictions(model: AnomalyDetector | OnnxModel, files: list[tuple[Path, Path]], folder: OutputFolder,
                       names: list[str], *, batch_size: int, heatmaps: bool, save_maps: bool, dicom_out: bool,
                       progress: bool | None) -> Path:
    """The body of :func:`predict_run`: score ``files`` in batches, write ``scores.csv`` (complete
    or not at all), the heatmaps, maps and DICOM outputs into ``folder``."""
    preprocessor = model.preprocessor
    scorer = Scorer(model, names)
    scored = skipped = 0
    dicom = any(is_dicom(f) for f, _ in files)  # DICOM identifiers as columns when there are DICOM files
    series: dict[str, OutputSeries] = {}  # the DICOM outputs' series, one pair per source series
    if dicom_out:
        others = [str(f) for f, _ in files if not is_dicom(f)]
        if others:
            log.warning("--dicom-out: %d of %d inputs are not DICOM files and get no DICOM outputs: %s%s",
                        len(others), len(files), ", ".join(others[:3]), ", ..." if len(others) > 3 else "")
    target = folder.path("scores.csv")
    with atomic_file(target, "w", newline="") as fh, progress_bar(progress) as bar:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "label", "normal_quantile", *names, *(DICOM_IDENTIFIERS if dicom else ())])
        task = bar.add_task("predict", total=len(files), info="")
        for chunk in _batches(files, batch_size):
            loaded = preprocessor.read_files([FileItem(f) for f, _ in chunk], on_error=model.config.data.on_error)
            bar.advance(task, len(chunk))
            skipped += len(loaded.skipped)
            images = loaded.images
            if len(images) == 0:
                continue
            batch = scorer(images)
            for i, image_id in enumerate(images.ids):
                label = "" if batch.abnormal is None else int(batch.abnormal[i])
                quantile = "" if batch.calibrated is None else f"{batch.calibrated[i]:.4f}"
                source = Path(image_id.partition("#")[0])
                ids = dicom_identifiers(source).values() if dicom and is_dicom(source) else \
                    [""] * (len(DICOM_IDENTIFIERS) if dicom else 0)
                writer.writerow([image_id, f"{batch.scores[i]:.6g}", label, quantile,
                                 *(f"{o.scores[i]:.6g}" for o in batch.outputs.values()), *ids])
            where = {str(f): name for f, name in chunk}
            if save_maps and batch.maps is not None:
                _save_maps(folder, batch, where)
            if heatmaps and batch.maps is not None:
                for i, image_id in enumerate(images.ids):
                    batch.save_heatmap(i, _output_path(folder, "heatmaps", where, image_id, ".png"))
            if dicom_out and batch.maps is not None:
                _save_dicom(folder, batch, where, series)
            scored += len(images)
        if scored == 0:
            raise ValueError(f"none of the {len(files)} given images could be read")
    if skipped:
        log.warning("%d of %d files could not be read and were skipped (see the warnings above)", skipped, len(files))
    return target


def _output_path(folder: OutputFolder, kind: str, names: dict[str, Path], image_id: str, suffix: str) -> Path:
    """``kind / name`` of an image in ``folder``, with ``suffix`` (``name_<slice>`` for the slices
    of a volume), recorded and its parent folders created."""
    source, _, slice_no = image_id.partition("#")
    name = names[source]
    return folder.path(Path(kind) / name.with_name(stem_of(name) + (f"_{slice_no}" if slice_no else "") + suffix))


def _save_maps(folder: OutputFolder, batch: Scored, names: dict[str, Path]) -> None:
    """The raw maps of ``batch`` as ``maps/<name>.npy`` (float32) and, with a pixel threshold, the
    binary lesion masks at it as ``masks/<name>.png`` (0 / 255)."""
    assert batch.maps is not None
    pixel_threshold = batch.scorer.model.pixel_threshold_
    volumes: dict[str, dict[int, np.ndarray]] = {}
    for i, image_id in enumerate(batch.images.ids):
        np.save(_output_path(folder, "maps", names, image_id, ".npy"), batch.maps[i].astype(np.float32))
        if batch.masks is not None:
            Image.fromarray(batch.masks[i]).save(_output_path(folder, "masks", names, image_id, ".png"))
        z = slice_index(image_id)  # only the NIfTI reader gives slice ids
        if z is not None:
            volumes.setdefault(image_id.partition("#")[0], {})[z] = batch.maps[i]
    for source, slices in volumes.items():  # every slice of a file is in the same batch of files
        name = names[source]
        name = name.with_name(stem_of(name) + ".nii.gz")
        write_nifti_maps(source, slices, folder.path("maps" / name))
        if pixel_threshold is not None:
            write_nifti_maps(source, slices, folder.path("masks" / name), threshold=pixel_threshold)


def _save_dicom(folder: OutputFolder, batch: Scored, names: dict[str, Path],
                series: dict[str, OutputSeries]) -> None:
    """``--dicom-out``: for each DICOM file of ``batch``, ``dicom/<name>.seg.dcm`` (the lesion
    mask) and ``dicom/<name>.sc.dcm`` (the heatmap overlay), :meth:`Scored.write_dicom`. A source
    that cannot get them (multi-frame, no Study UID, ...) is named in a warning, and the others
    are written."""
    first: dict[str, int] = {}
    for i, image_id in enumerate(batch.images.ids):
        first.setdefault(image_id.partition("#")[0], i)
    for source, i in first.items():
        if not is_dicom(Path(source)):
            continue
        try:
            seg_path = _output_path(folder, "dicom", names, source, SEG_SUFFIX)
            _output_path(folder, "dicom", names, source, SC_SUFFIX)  # recorded: written with the SEG
            batch.write_dicom(i, source, seg_path.parent, stem_of(names[source]), series)
        except (DicomOutputError, ImageReadError) as exc:
            log.warning("%s", exc)
