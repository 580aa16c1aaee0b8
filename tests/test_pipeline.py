"""End to end on a tiny synthetic folder: train -> run files -> evaluate/predict/report agree."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from medad.config import RunConfig, load_config
from medad.data.synthetic import write_phantom_dataset
from medad.evaluation.records import ResultSet
from medad import AnomalyDetector
from medad.pipeline import evaluate_run, report_run, train_run
from medad.prediction import predict_run
from medad.data.loading import load_splits
from medad.evaluation.projection import project

TINY = {
    "data": {"image_size": 32, "channels": 1, "val_fraction": 0.2},
    "encoder": {"width": 8},
    "train": {"epochs": 1, "batch_size": 8, "progress": False, "seed": 3},
    "evaluation": {"top_k": 4},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, n_train=24, n_test_normal=6, n_test_abnormal=6, size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    cfg = RunConfig.model_validate({**TINY, "data": {**TINY["data"], "path": str(dataset)}})
    run_dir = tmp_path_factory.mktemp("run")
    metrics = train_run(cfg, run_dir)
    return cfg, run_dir, metrics


def test_run_writes_every_file(run):
    _, run_dir, metrics = run
    for name in ("config.yaml", "manifest.csv", "metrics.json", "predictions.npz", "report.html",
                 "model/model.pt", "model/model.json", "checkpoints/last.pt", "checkpoints/last.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "tensorboard").exists()  # no train.log / --log: no experiment log
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("image_auroc", "image_ap", "sensitivity", "specificity", "accuracy", "threshold",
                "threshold_rule", "n_train", "n_test_normal", "n_test_abnormal", "train_seconds",
                "method", "detector", "scores"):
        assert key in saved, key
    assert saved["n_test_normal"] == 6 and saved["n_test_abnormal"] == 6
    assert saved["threshold_rule"].startswith("val_normal")
    assert set(saved["scores"]) == {"mahalanobis", "nnd", "lh", "cosine"}
    assert 0.0 <= saved["image_auroc"] <= 1.0


def test_test_and_validation_images_share_one_projection_basis_fitted_on_training_normals(run):
    """The report's embedding plot: one PCA basis from the training normals, saved with the model,
    for every role (issue 12: two per-role fits centred each cloud at zero)."""
    cfg, run_dir, _ = run
    model = AnomalyDetector.load(run_dir)
    splits = load_splits(cfg.data, seed=cfg.train.seed)
    results = ResultSet.load(run_dir / "predictions.npz")
    for role, images in (("val", splits.val), ("test", splits.test)):
        saved = np.array([r.projection for r in results.with_role(role)])
        np.testing.assert_allclose(saved, project(model.embed(images).numpy(), model.projection_), atol=1e-4)
    train = model.embed(splits.train).numpy()
    assert np.allclose(project(train, model.projection_).mean(0), 0, atol=1e-3)  # centred on the training normals
    assert not np.allclose(project(model.embed(splits.val).numpy(), model.projection_).mean(0), 0, atol=1e-3)


def test_manifest_roles_never_mix_validation_and_test(run):
    _, run_dir, _ = run
    with open(run_dir / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    roles = {r["role"] for r in rows}
    assert {"train", "val", "test-normal", "test-abnormal"} <= roles
    val_ids = {r["id"] for r in rows if r["role"] == "val"}
    assert val_ids and all("train" in i for i in val_ids)


def test_saved_config_reproduces_the_run(run, tmp_path):
    cfg, run_dir, metrics = run
    again = load_config(run_dir / "config.yaml")
    assert again == cfg
    metrics2 = train_run(again, tmp_path / "again")
    for key in ("image_auroc", "image_ap", "threshold", "sensitivity", "specificity"):
        assert metrics2[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-6), key


def test_predict_and_evaluate_reproduce_training_scores(run, dataset, tmp_path):
    _, run_dir, metrics = run
    trained = {r.id: r.score for r in ResultSet.load(run_dir / "predictions.npz").with_role("test")}
    scores_csv = predict_run(run_dir, [dataset / "test" / "good", dataset / "test" / "lesion"], tmp_path / "pred")
    with open(scores_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {"path", "score", "label", "normal_quantile"} <= set(rows[0])
    for row in rows:  # printed to 6 significant digits (5e-6), from float32 embeddings: 1e-4 leaves room for both
        assert float(row["score"]) == pytest.approx(trained[row["path"]], rel=1e-4, abs=1e-5)
        assert row["label"] in ("0", "1") and 0.0 <= float(row["normal_quantile"]) <= 1.0
    evaluated, out = evaluate_run(run_dir, dataset)
    assert evaluated["image_auroc"] == pytest.approx(metrics["image_auroc"])
    assert (out / "report.html").is_file() and out == run_dir / "eval" / dataset.name
    # an evaluation folder names its model, so that its report finds the training history, wherever it is
    elsewhere, _ = evaluate_run(run_dir / "model", dataset, tmp_path / "somewhere" / "eval")
    assert elsewhere["model"] == os.path.relpath(run_dir / "model", tmp_path / "somewhere" / "eval")
    (tmp_path / "somewhere" / "eval" / "report.html").unlink()
    html = report_run(tmp_path / "somewhere" / "eval").read_text()
    assert "No training history given" not in html


def test_report_rerenders_from_saved_predictions(run):
    _, run_dir, _ = run
    report = run_dir / "report.html"
    report.unlink()
    assert report_run(run_dir) == report and report.stat().st_size > 1000


def test_resume_of_a_finished_run_changes_nothing(run, tmp_path):
    cfg, run_dir, metrics = run
    again = train_run(cfg, run_dir, resume=True)
    assert again["image_auroc"] == pytest.approx(metrics["image_auroc"])


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no data"):
        train_run(RunConfig(), tmp_path)
    bad = RunConfig.model_validate({"data": {"path": str(tmp_path / "nowhere")}})
    with pytest.raises(Exception, match="nowhere"):
        train_run(bad, tmp_path / "run")


def test_predictions_file_keeps_gallery_images_only(run):
    _, run_dir, _ = run
    results = ResultSet.load(run_dir / "predictions.npz")
    shown = [r for r in results if r.image is not None]
    assert 0 < len(shown) <= 8
    assert all(r.projection is not None and r.projection.shape == (2,) for r in results)
    assert np.isfinite(results.scores()).all()


def test_evaluate_needs_only_a_test_folder(run, dataset, tmp_path):
    import shutil

    _, run_dir, metrics = run
    only_test = tmp_path / "only_test"
    shutil.copytree(dataset / "test", only_test / "test")
    shutil.copytree(dataset / "ground_truth", only_test / "ground_truth")
    evaluated, out = evaluate_run(run_dir, only_test, tmp_path / "eval")
    assert out == tmp_path / "eval"
    assert evaluated["image_auroc"] == pytest.approx(metrics["image_auroc"])
    with pytest.raises(ValueError, match="no test/ folder"):
        evaluate_run(run_dir, tmp_path / "eval")


def test_an_existing_run_is_never_overwritten_by_accident(run):
    cfg, run_dir, _ = run
    before = (run_dir / "model" / "model.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train_run(cfg, run_dir)
    assert (run_dir / "model" / "model.pt").read_bytes() == before


def test_evaluate_never_writes_into_a_run_and_replaces_an_evaluation_only_when_asked(run, dataset, tmp_path):
    """Issue 27: ``medad evaluate --out RUN`` overwrote the training run's metrics.json."""
    from typer.testing import CliRunner

    from medad.cli import app

    _, run_dir, _ = run
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.json", "report.html", "predictions.npz")}
    for out in (run_dir, run_dir / "model"):
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="holds a training run or a model"):
                evaluate_run(run_dir, dataset, out, overwrite=overwrite)
    assert all((run_dir / name).read_bytes() == content for name, content in before.items())
    result = CliRunner().invoke(app, ["evaluate", "--model", str(run_dir), "--data", str(dataset), "--out",
                                      str(run_dir)])
    assert result.exit_code == 2 and "holds a training run" in result.output and "Traceback" not in result.output
    out = tmp_path / "eval"
    evaluate_run(run_dir, dataset, out)
    (out / "metrics.json").write_text("{}")  # stands for another evaluation's figures
    with pytest.raises(FileExistsError, match="already holds an evaluation .*--overwrite"):
        evaluate_run(run_dir, dataset, out)
    assert (out / "metrics.json").read_text() == "{}"
    metrics, _ = evaluate_run(run_dir, dataset, out, overwrite=True)
    assert json.loads((out / "metrics.json").read_text())["image_auroc"] == metrics["image_auroc"]


def test_an_interrupted_evaluation_has_no_metrics_json(run, dataset, tmp_path, monkeypatch):
    """metrics.json is written last: a folder holding it holds a complete evaluation."""
    from medad import pipeline

    _, run_dir, _ = run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "render_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run_dir, dataset, tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["predictions.npz"]
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"already holds an evaluation \(predictions.npz\)"):
        evaluate_run(run_dir, dataset, tmp_path / "eval")
    evaluate_run(run_dir, dataset, tmp_path / "eval", overwrite=True)
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"predictions.npz", "report.html", "metrics.json"}


def test_spatial_detector_gives_localisation_metrics_and_heatmaps(dataset, tmp_path):
    cfg = RunConfig.model_validate(
        {**TINY, "data": {**TINY["data"], "path": str(dataset)}, "detector": {"name": "padim", "params": {"d": 16}}}
    )
    metrics = train_run(cfg, tmp_path / "run")
    for key in ("pixel_auroc", "pro", "dice", "iou", "oracle_dice", "pixel_threshold", "pixel_threshold_rule"):
        assert key in metrics, key
    assert metrics["pixel_threshold_rule"] == "val_normal_pixel_q0.99"
    assert metrics["image_score_from_map"] == "max"
    assert metrics["oracle_dice"] >= metrics["dice"] - 1e-9
    assert set(metrics["scores"]) == {"padim", "mahalanobis", "nnd", "lh", "cosine"}
    shown = [r for r in ResultSet.load(tmp_path / "run" / "predictions.npz") if r.image is not None]
    assert all(r.anomaly_map is not None and r.anomaly_map.shape == (32, 32) for r in shown)
    predict_run(tmp_path / "run", [dataset / "test" / "lesion"], tmp_path / "pred")
    assert len(list((tmp_path / "pred" / "heatmaps" / "lesion").glob("*.png"))) == 6
    _predict_batches_nested_folders_and_colour_scale(tmp_path / "run", dataset, tmp_path)
    _predict_writes_nifti_maps_in_the_input_geometry(tmp_path / "run", tmp_path)


def _predict_writes_nifti_maps_in_the_input_geometry(run_dir, tmp_path) -> None:
    """A NIfTI input gets its map and mask back as volumes of its own shape and affine, the scored
    slice (data.nifti_slices = middle) equal to its .npy map under the reader's rotation."""
    import nibabel as nib

    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    volume = np.random.default_rng(0).random((32, 32, 5)).astype(np.float32)
    (tmp_path / "nii").mkdir()
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "nii" / "sub-01.T2.nii.gz")
    predict_run(run_dir, [tmp_path / "nii"], tmp_path / "pn", heatmaps=False, save_maps=True)
    maps, masks = (nib.load(tmp_path / "pn" / kind / "nii" / "sub-01.T2.nii.gz") for kind in ("maps", "masks"))
    flat = np.load(tmp_path / "pn" / "maps" / "nii" / "sub-01.T2_z=2.npy")
    assert maps.shape == masks.shape == (32, 32, 5) and np.allclose(maps.affine, affine)
    data = maps.get_fdata()
    np.testing.assert_allclose(data[:, :, 2], np.rot90(flat, k=-1), rtol=1e-6)
    assert not data[:, :, [0, 1, 3, 4]].any()  # slices not scored are 0
    threshold = AnomalyDetector.load(run_dir).pixel_threshold_
    assert masks.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(masks.dataobj)[:, :, 2] == 1, np.rot90(flat, k=-1) > threshold)


def _predict_batches_nested_folders_and_colour_scale(run_dir, dataset, tmp_path) -> None:
    """predict: batches give the scores of one pass, nested folders are searched, equal names in two
    folders keep both heatmaps, a heatmap does not depend on what else is predicted, only the
    primary score is computed unless asked."""
    import shutil

    from matplotlib import colormaps

    from medad.report.figures import OVERLAY_ALPHA, OVERLAY_CMAP

    nested = tmp_path / "export" / "study1" / "series1"
    nested.mkdir(parents=True)
    for f in sorted((dataset / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(f, nested / f.name)
    twin = tmp_path / "twin" / "lesion"  # another folder called lesion, with the same file names
    shutil.copytree(dataset / "test" / "lesion", twin)
    one_go = predict_run(run_dir, [tmp_path / "export", dataset / "test" / "lesion", twin], tmp_path / "p1",
                         batch_size=100)
    batched = predict_run(run_dir, [tmp_path / "export", dataset / "test" / "lesion", twin], tmp_path / "p2",
                          batch_size=2, scores="all")
    with open(one_go) as fh:
        rows = list(csv.DictReader(fh))
    with open(batched) as fh:
        rows_batched = list(csv.DictReader(fh))
    assert len(rows) == len(rows_batched) == 15 and list(rows[0]) == ["path", "score", "label", "normal_quantile",
                                                                       "padim"]
    assert {"mahalanobis", "nnd"} <= set(rows_batched[0])
    for a, b in zip(rows, rows_batched):  # other batches, other kernels (~1e-6), and printed to 6 digits (1e-5)
        assert a["path"] == b["path"] and float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4, abs=1e-5)
    heat = tmp_path / "p1" / "heatmaps"
    assert len(list((heat / "export" / "study1" / "series1").glob("*.png"))) == 3
    assert len(list((heat / "lesion").glob("*.png"))) == len(list((heat / "lesion_2").glob("*.png"))) == 6
    with_maps = predict_run(run_dir, [dataset / "test" / "lesion"], tmp_path / "p3", heatmaps=False, save_maps=True)
    assert not (tmp_path / "p3" / "heatmaps").exists()
    saved = sorted((tmp_path / "p3" / "maps" / "lesion").glob("*.npy"))
    masks = sorted((tmp_path / "p3" / "masks" / "lesion").glob("*.png"))
    assert len(saved) == len(masks) == 6 and with_maps.is_file()
    model = AnomalyDetector.load(run_dir)
    raw = np.load(saved[0])
    assert raw.shape == (32, 32) and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    assert np.array_equal(np.asarray(Image.open(masks[0])) > 0, raw > model.pixel_threshold_)
    alone = tmp_path / "alone"
    first = sorted(twin.glob("*.png"))[0]
    predict_run(run_dir, [first], alone)
    picture = np.asarray(Image.open(alone / "heatmaps" / first.name)).astype(int)
    among_others = np.asarray(Image.open(heat / "lesion_2" / first.name)).astype(int)
    # Alone or among 14 others, the image's map comes from other batches, so other kernels and rounding (~1e-5
    # of its values): a pixel on the edge between two of the colour map's 256 colours may take the next one,
    # blended at OVERLAY_ALPHA. A colour scale taken from the batch, not fixed at fit time, changes ~2/3 of them.
    cmap = colormaps[OVERLAY_CMAP]
    step = np.abs(np.diff(cmap(np.arange(cmap.N))[:, :3] * 255, axis=0)).max()
    changed = np.abs(picture - among_others)
    assert changed.max() <= OVERLAY_ALPHA * step + 1 and changed.any(-1).mean() <= 0.02


def test_pmsacl_run_shows_its_medmix_examples_in_the_report(dataset, tmp_path):
    data = {**TINY["data"], "path": str(dataset)}
    cfg = RunConfig.model_validate({**TINY, "data": data, "method": {"name": "pmsacl"}})
    train_run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "figures" / "pmsacl_examples.png").is_file()
    html = (tmp_path / "run" / "report.html").read_text()
    section = html[html.index('id="method"'):]
    assert "pmsacl examples" in section[:2000] and "data:image/png;base64," in section[:5000]


def test_checkpoint_selection_by_sensitivity(dataset, tmp_path):
    cfg = RunConfig.model_validate(
        {**TINY, "data": {**TINY["data"], "path": str(dataset)},
         "train": {**TINY["train"], "epochs": 3, "select_by": "sensitivity", "sensitivity_holdout": 6}}
    )
    metrics = train_run(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["history"]
    assert all(0.0 <= h["sensitivity"] <= 1.0 and 0.0 < h["sensitivity_se"] < 0.5 for h in history)
    best, last = max(history, key=lambda h: h["sensitivity"]), history[-1]
    clear_gain = best["sensitivity"] - last["sensitivity"] > math.hypot(best["sensitivity_se"], last["sensitivity_se"])
    used = best if clear_gain else last
    assert metrics["select_by"] == "sensitivity"
    assert metrics["selected_epoch"] == used["epoch"]
    assert metrics["sensitivity_score"] == used["sensitivity"]
    assert metrics["sensitivity_score_se"] == used["sensitivity_se"]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "sensitivity score</i> (label-free; not the true-positive rate above) is the AUROC" in html
    assert "standard error" in html


def test_con2_run_reports_its_context_silhouette(dataset, tmp_path):
    cfg = RunConfig.model_validate({**TINY, "data": {**TINY["data"], "path": str(dataset)}, "method": {"name": "con2"}})
    metrics = train_run(cfg, tmp_path / "run")
    assert -1.0 <= metrics["context_silhouette"] <= 1.0
    assert (tmp_path / "run" / "figures" / "con2_examples.png").is_file()


def test_predict_reports_the_dicom_identifiers_of_a_nested_export(run, tmp_path):
    from medad.data.synthetic import dicom_dataset

    _, run_dir, _ = run
    series = tmp_path / "dcm" / "study1" / "series1"
    series.mkdir(parents=True)
    uids = []
    for i in range(2):
        ds = dicom_dataset((np.random.default_rng(i).random((32, 32)) * 4000).astype(np.uint16), 12,
                           PatientID="P007", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4")
        ds.save_as(series / f"im{i}.dcm", enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    with open(predict_run(run_dir, [tmp_path / "dcm"], tmp_path / "pred")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["SOPInstanceUID"] for r in rows] == uids
    assert {(r["PatientID"], r["StudyInstanceUID"], r["SeriesInstanceUID"]) for r in rows} == {("P007", "1.2.3",
                                                                                                  "1.2.3.4")}
