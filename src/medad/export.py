"""``medad export``: a saved model as one ONNX graph, from the prepared image batch to the image
score (and the anomaly map for spatial detectors).

The graph's input ``image`` is ``[B, C, S, S]`` float32 in [0, 1], as
:meth:`medad.model.AnomalyDetector.prepare` makes it (size, channels and ``data.intensity``
scaling, described in the metadata); its outputs are ``score [B]`` and, for a spatial primary
detector, ``anomaly_map [B, S, S]``. The ONNX metadata (``metadata_props["medad"]``, JSON) holds
the preprocessing, the label-free thresholds, the heatmap colour scale and the validation-normal
scores (for :func:`medad.evaluation.calibration.normal_quantile`). Export traces the product's own
scoring code (:meth:`AnomalyDetector._score`), then checks that onnxruntime reproduces PyTorch.

Exported: the embedding scores (``mahalanobis``, ``lh``, ``nnd``, ``cosine``) without test-time
augmentation or contexts, ``padim``, and the autoencoders (``ae``, ``ae_u``, ``memae``,
``msssim_ae``); a map blur (``maps.smooth``) is part of the graph. Refused, with the reason:
detectors and map steps that are not tensor operations (``maps.foreground``, under a detector with
maps, and the ``dae``'s foreground fill holes with scipy; ``ddad``, ``igd`` and ``fanogan`` are not
supported yet).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medad import __version__
from medad.atomic import atomic_file
from medad.config import RunConfig
from medad.data.preprocessor import Preprocessor
from medad.detectors.base import DetectorOutput
from medad.detectors.embedding import EmbeddingDetector
from medad.files import one_line
from medad.model import AnomalyDetector

EXPORTABLE_SPATIAL = frozenset({"padim", "ae", "ae_u", "memae", "msssim_ae"})
REFUSED = {
    "dae": "its input foreground mask fills holes with scipy, which is not a graph operation",
    "ddad": "its ensembles and ASR-Net are not wired for export yet",
    "igd": "its scoring is not wired for export yet",
    "patchcore": "its nearest-patch search is not wired for export yet",
    "fanogan": "its scoring is not wired for export yet",
    "intensity": "it is a baseline; its map is the image itself",
}
RELATIVE_TOLERANCE = 1e-4


class ExportError(ValueError):
    """The model cannot be expressed as one graph; the message says why."""


def check_exportable(model: AnomalyDetector) -> None:
    """Raise :class:`ExportError` unless the model's primary score can be exported."""
    name = model.primary
    if name not in model.detectors_:
        raise ExportError(f"the fused score {name!r} cannot be exported: it needs several detectors in one graph; "
                          "export a model fitted without detector.fuse")
    det = model.detectors_[name]
    if name in REFUSED:
        raise ExportError(f"detector {name!r} cannot be exported: {REFUSED[name]}")
    if isinstance(det, EmbeddingDetector):  # image level: no map, so config.maps plays no part
        if det.params.n_views != 1:
            raise ExportError(f"detector {name!r} uses {det.params.n_views} views (tta / contexts): export scores "
                              "one view; refit with tta: 0 and contexts: [] to export")
        return
    if name not in EXPORTABLE_SPATIAL:
        raise ExportError(f"detector {name!r} cannot be exported (supported: embedding scores, "
                          f"{', '.join(sorted(EXPORTABLE_SPATIAL))})")
    if model.config.maps.foreground is not None:
        raise ExportError("maps.foreground cannot be exported: the foreground mask fills holes with scipy; "
                          "export a model fitted without it, or score with `medad predict`")


class ScoreGraph(nn.Module):
    """The primary score of a fitted model as a module: ``image -> (score[, anomaly_map])``."""

    def __init__(self, model: AnomalyDetector):
        super().__init__()
        check_exportable(model)
        self.model = model
        self.encoder = model.encoder_  # registered, so that the exporter sees the weights
        self.detectors = model.detectors_

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        out = self.model._score(image, [self.model.primary])[self.model.primary]
        score = out.scores.float()
        return (score,) if out.maps is None else (score, out.maps.float())


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float  # of the image scores, onnxruntime against PyTorch, on the check images
    max_rel_diff: float  # the same divided by the largest absolute score


def metadata(model: AnomalyDetector, spatial: bool) -> dict[str, Any]:
    """What a user of the graph needs besides the weights (stored as JSON in the ONNX file)."""
    return {
        "medad_version": __version__,
        "primary": model.primary,
        "input": {"name": "image", "layout": "NCHW float32 in [0, 1]", **model.preprocessor.metadata()},
        "outputs": ["score", "anomaly_map"] if spatial else ["score"],
        "threshold": model.threshold_,
        "threshold_rule": model.threshold_rule_,
        "pixel_threshold": model.pixel_threshold_,
        "map_range": model.map_range_,
        "val_scores": model.val_scores_,
        "manifest_sha256": model.manifest_sha256_,
        "config": model.config.model_dump(mode="json"),
    }


def export_onnx(model_dir: str | Path, out: str | Path, check_images: Any = None, opset: int = 17) -> ExportResult:
    """Export the model in ``model_dir`` to ``out`` (.onnx) and check it with onnxruntime on
    ``check_images`` (anything :meth:`AnomalyDetector.prepare` accepts; default: 2 random images)."""
    import onnx
    import onnxruntime as ort

    model = AnomalyDetector.load(model_dir, "cpu")
    graph = ScoreGraph(model).eval()
    data = model.config.data
    size, channels = data.image_size, data.channels
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    check = example if check_images is None else model.prepare(check_images)
    with torch.no_grad():
        reference = graph(check)
    spatial = len(reference) == 2
    names = ["score", "anomaly_map"] if spatial else ["score"]
    axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values taken as constants
        torch.onnx.export(graph, (example,), buffer, input_names=["image"], output_names=names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medad", json.dumps(metadata(model, spatial))
    content = proto.SerializeToString()
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": check.numpy().astype(np.float32)})
    diff = float(np.abs(got[0] - reference[0].numpy()).max())
    rel = diff / max(float(reference[0].abs().max()), 1e-12)
    if rel > RELATIVE_TOLERANCE:
        raise ExportError(f"onnxruntime disagrees with PyTorch on the image scores (max abs diff {diff:.3g}, "
                          f"relative {rel:.3g} > {RELATIVE_TOLERANCE}); nothing was written")
    out = Path(out)
    with atomic_file(out) as fh:  # written once checked, whole or not at all
        fh.write(content)
    return ExportResult(out, diff, rel)


def check_signature(path: Path, session: Any, preprocessor: Preprocessor) -> None:
    """Raise ``ValueError`` unless ``session`` has the inputs and outputs :func:`export_onnx` writes:
    one float input ``image`` ``[batch, C, S, S]`` at the preprocessor's channels and size, outputs
    ``score`` (and ``anomaly_map``)."""
    c, s = preprocessor.channels, preprocessor.image_size
    inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    fits = len(inputs) == 1 and inputs[0][:2] == ("image", "tensor(float)") and len(inputs[0][2]) == 4 \
        and all(isinstance(d, str) or d == want for d, want in zip(inputs[0][2][1:], (c, s, s)))
    if not fits or outputs not in (["score"], ["score", "anomaly_map"]):
        raise ValueError(f"{path} does not look like a medad export: its inputs are "
                         f"{', '.join(f'{n} {t} {d}' for n, t, d in inputs) or 'none'} and its outputs "
                         f"{', '.join(outputs) or 'none'}, expected the input image tensor(float) "
                         f"['batch', {c}, {s}, {s}] and the outputs score (and anomaly_map)")


class OnnxModel:
    """An exported graph with the parts of :class:`AnomalyDetector` that ``medad predict`` reads:
    ``config``, ``preprocessor``, ``primary``, ``prepare``, ``score_all``, the thresholds, the validation-normal
    scores, the colour scale and the training manifest's hash, all from the file's metadata."""

    def __init__(self, path: str | Path):
        import onnx
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}" if not path.exists() else f"not a file: {path}")
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # protobuf's DecodeError, ...: not an ONNX file, or a truncated one
            raise ValueError(f"{path} is not a readable ONNX file ({one_line(exc)}); "
                             "write it again with `medad export`") from None
        if "medad" not in props:
            raise ValueError(f"{path} was not exported by medad (no 'medad' metadata)")
        try:
            meta = json.loads(props["medad"])
            self.config = RunConfig.model_validate(meta["config"])
            self.preprocessor = Preprocessor.from_metadata(meta["input"])
            self.primary: str = meta["primary"]
            self.threshold_: float | None = meta["threshold"]
            self.pixel_threshold_: float | None = meta["pixel_threshold"]
            self.val_scores_: list[float] = meta["val_scores"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} holds unreadable medad metadata ({type(exc).__name__}: {exc})") from None
        self.map_range_ = tuple(meta["map_range"]) if meta.get("map_range") else None
        self.threshold_rule_: str = meta.get("threshold_rule", "none")
        self.manifest_sha256_: str = meta.get("manifest_sha256", "")  # "" in older exports
        self.fitted_scores: list[str] = [self.primary]
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own errors: an invalid or unsupported graph
            raise ValueError(f"onnxruntime cannot load {path}: {exc}") from None
        check_signature(path, self.session, self.preprocessor)

    def prepare(self, images: Any) -> Tensor:
        return self.preprocessor(images)

    def score_all(self, images: Any, names: Any = None) -> dict[str, DetectorOutput]:
        """The primary score (and map) of ``images``; the graph holds no other score."""
        if names is not None and set(names) - {self.primary}:
            raise ValueError(f"an exported model computes its primary score {self.primary!r} only")
        outputs = self.session.run(None, {"image": self.prepare(images).numpy()})
        maps = torch.from_numpy(outputs[1]) if len(outputs) > 1 else None
        return {self.primary: DetectorOutput(scores=torch.from_numpy(outputs[0]).double(), maps=maps)}
