"""ONNX export: onnxruntime reproduces the PyTorch scores and maps at any batch size, the metadata
carries what the graph needs, and models that cannot be one graph are refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medad import AnomalyDetector
from medad.cli import app
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms
from medad.data.preprocessor import Preprocessor
from medad.export import ExportError, OnnxModel, export_onnx

NORMALS = make_phantoms(24, 32, seed=0)[0]
TEST = make_phantoms(5, 32, seed=1, lesion=True)[0]


def _fitted(tmp_path, detector: str, params: dict | None = None, size: int = 32,
            **extra) -> tuple[AnomalyDetector, object]:
    cfg = RunConfig.model_validate({
        "data": {"image_size": size, "val_fraction": 0.25}, "encoder": {"width": 8}, "method": {"name": "none"},
        "detector": {"name": detector, "params": params or {}}, "train": {"epochs": 0, "progress": False}, **extra,
    })
    model = AnomalyDetector(cfg).fit(NORMALS if size == 32 else make_phantoms(24, size, seed=0)[0])
    model.save(tmp_path / "model")
    return model, tmp_path / "model"


@pytest.mark.parametrize(("detector", "params", "extra"), [
    ("mahalanobis", {}, {}),
    ("nnd", {"k": 2}, {}),
    # an image-level score on an early stage, in a run whose maps (of other detectors) use a
    # foreground mask: the mask plays no part in the exported graph (chest-xray without its fusion)
    ("lh", {"layer": "layer1"}, {"maps": {"foreground": 0.1}}),
    ("padim", {"d": 16}, {"maps": {"smooth": 8.0}}),
    ("ae", {"epochs": 1, "batch_size": 8}, {}),
])
def test_onnxruntime_reproduces_scores_and_maps(tmp_path, detector, params, extra) -> None:
    model, folder = _fitted(tmp_path, detector, params, **extra)
    result = export_onnx(folder, tmp_path / "m.onnx", check_images=TEST[:3])
    assert result.path.is_file() and result.max_rel_diff <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": model.prepare(TEST).numpy()})  # another batch size than the check
    expected = model.decision_function(TEST)
    assert np.allclose(outputs[0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    spatial = detector in ("padim", "ae")
    assert len(outputs) == (2 if spatial else 1)
    if spatial:
        assert np.allclose(outputs[1], model.anomaly_map(TEST), rtol=1e-4, atol=1e-5)
    meta = json.loads({p.key: p.value for p in onnx.load(str(result.path)).metadata_props}["medad"])
    assert meta["primary"] == detector and meta["threshold"] == pytest.approx(model.threshold_)
    assert meta["input"]["image_size"] == 32 and meta["val_scores"] == pytest.approx(model.val_scores_)
    assert meta["outputs"] == (["score", "anomaly_map"] if spatial else ["score"])


@pytest.mark.parametrize(("detector", "params", "extra", "reason"), [
    ("dae", {"epochs": 1, "widths": [4, 8]}, {}, "fills holes with scipy"),
    ("nnd", {"tta": 2}, {}, "tta / contexts"),
    ("patchcore", {"coreset_ratio": 0.5}, {}, "nearest-patch search"),
    ("padim", {"d": 16}, {"maps": {"foreground": 0.1}}, "maps.foreground"),
])
def test_models_that_are_not_one_graph_are_refused_with_the_reason(tmp_path, detector, params, extra, reason):
    _, folder = _fitted(tmp_path, detector, params, **extra)
    with pytest.raises(ExportError, match=reason):
        export_onnx(folder, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("size", [32, 100, 224])
def test_predict_with_the_exported_model_gives_the_run_s_scores(tmp_path, size) -> None:
    """At the model's size, and at sizes whose feature maps do not divide evenly (100 px) or that
    the presets take in (224 px), from images of other, non-square sizes (issue 29: a preset's
    image size is a choice)."""
    import csv

    from PIL import Image

    from medad.evaluation.calibration import normal_quantile
    from medad.prediction import predict_run

    model, folder = _fitted(tmp_path, "padim", {"d": 16}, size)
    export_onnx(folder, tmp_path / "m.onnx")
    images = tmp_path / "images"
    images.mkdir()
    for i, x in enumerate(make_phantoms(5, 64, seed=1, lesion=True)[0]):
        image = Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8))
        image.resize((64 + 7 * i, 57)).save(images / f"{i}.png")
    rows = {}
    for name, source in (("torch", folder), ("onnx", tmp_path / "m.onnx")):
        with open(predict_run(source, [images], tmp_path / name)) as fh:
            rows[name] = list(csv.DictReader(fh))
        assert len(list((tmp_path / name / "heatmaps" / "images").glob("*.png"))) == 5
    rel = 1e-4  # onnxruntime against PyTorch: other float32 kernels (export checks the same)
    for a, b in zip(rows["torch"], rows["onnx"]):
        score = float(a["score"])
        assert a["path"] == b["path"] and float(b["score"]) == pytest.approx(score, rel=rel)
        # the label and quantile are decisions on the score: they must be those of some score within
        # rel of PyTorch's, which differ from PyTorch's only where the threshold or a validation
        # score lies that close (4 decimals printed)
        assert a["label"] == b["label"] or abs(score - model.threshold_) <= rel * abs(score)
        low, high = normal_quantile(np.array([score - rel * abs(score), score + rel * abs(score)]), model.val_scores_)
        assert low - 1e-4 <= float(b["normal_quantile"]) <= high + 1e-4
        assert low - 1e-4 <= float(a["normal_quantile"]) <= high + 1e-4


def test_cli_export(tmp_path) -> None:
    _, folder = _fitted(tmp_path, "mahalanobis")
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--model", str(folder), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 0 and "max abs diff" in result.output and (tmp_path / "x.onnx").is_file()
    result = runner.invoke(app, ["export", "--model", str(folder), "--out", str(tmp_path / "y.pt"), "--format", "pt"])
    assert result.exit_code != 0 and "onnx is the only" in " ".join(result.output.split())


def _graph_file(path, inputs: dict[str, list], medad: bool = True):
    """A hand-made ONNX file: the mean of its first input as ``score``, with medad's metadata for
    32-px grey images when ``medad``."""
    from onnx import TensorProto, helper

    first = next(iter(inputs))
    node = helper.make_node("ReduceMean", [first], ["score"], axes=list(range(1, len(inputs[first]))), keepdims=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                            for n, shape in inputs.items()],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if medad:
        entry = model.metadata_props.add()
        entry.key, entry.value = "medad", json.dumps({
            "config": RunConfig.model_validate({"data": {"image_size": 32}}).model_dump(mode="json"),
            "input": Preprocessor(32, 1).metadata(), "primary": "mahalanobis", "threshold": 0.5,
            "pixel_threshold": None, "val_scores": [0.25, 0.75], "map_range": None})
    onnx.save(model, path)
    return path


def test_an_onnx_file_shaped_like_medad_s_export_is_accepted(tmp_path) -> None:
    model = OnnxModel(_graph_file(tmp_path / "m.onnx", {"image": ["batch", 1, 32, 32]}))
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model.score_all(x)["mahalanobis"].scores.float(), x.mean((1, 2, 3)), atol=1e-6)


def test_broken_or_foreign_onnx_files_give_one_line_naming_the_file(tmp_path) -> None:
    """Issue 27: ``medad predict --model broken.onnx`` ended in a protobuf traceback."""
    good = _graph_file(tmp_path / "good.onnx", {"image": ["batch", 1, 32, 32]}).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.onnx").write_text("a text file, not a model\n")
    _graph_file(tmp_path / "other.onnx", {"image": ["batch", 1, 32, 32]}, medad=False)
    _graph_file(tmp_path / "inputs.onnx", {"x": ["batch", 3]})
    _graph_file(tmp_path / "size.onnx", {"image": ["batch", 3, 64, 64]})
    _graph_file(tmp_path / "two.onnx", {"image": ["batch", 1, 32, 32], "mask": ["batch", 1, 32, 32]})
    expected = {"cut": "not a readable ONNX file", "text": "not a readable ONNX file", "other": "not exported by medad",
                "inputs": "does not look like a medad export: its inputs are x", "size": "does not look like",
                "two": "does not look like", "missing": "ONNX model not found"}
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    runner = CliRunner()
    for name, message in expected.items():
        with pytest.raises((ValueError, OSError), match=message):
            OnnxModel(tmp_path / f"{name}.onnx")
        result = runner.invoke(app, ["predict", "--model", str(tmp_path / f"{name}.onnx"), str(images),
                                     "--out", str(tmp_path / "pred")])
        line = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{name}.onnx" in line and "Traceback" not in result.output, result.output
        assert not (tmp_path / "pred" / "scores.csv").exists()


@pytest.mark.integration
def test_export_agrees_on_real_images(shared_data, tmp_path) -> None:
    data = shared_data / "lgg_brain_mri_mini"
    cfg = RunConfig.model_validate({
        "data": {"path": str(data), "image_size": 64, "channels": 3}, "encoder": {"width": 8},
        "method": {"name": "none"}, "detector": {"name": "padim", "params": {"d": 32}},
        "train": {"epochs": 0, "progress": False},
    })
    model = AnomalyDetector(cfg).fit(data / "train" / "good")
    model.save(tmp_path / "model")
    result = export_onnx(tmp_path / "model", tmp_path / "m.onnx", check_images=data / "test" / "tumor")
    print(f"real images: max abs diff {result.max_abs_diff:.3g}, relative {result.max_rel_diff:.3g}")
    assert result.max_rel_diff <= 1e-4
