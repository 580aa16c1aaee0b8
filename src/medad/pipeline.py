"""Run-level jobs behind the CLI: train, evaluate and report, each writing a run folder
(:class:`medad.runfolder.RunFolder` lists its files); ``medad predict`` is :mod:`medad.prediction`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from medad import distributed, experiment_log
from medad.atomic import atomic_write_text
from medad.config import RunConfig, save_config
from medad.data.imageset import ImageSet
from medad.data.loading import load_splits, load_test_split
from medad.detectors.base import DetectorOutput
from medad.evaluation.checks import evaluation_warnings
from medad.evaluation.projection import fit_projection, project
from medad.evaluation.records import ImageResult, ResultSet
from medad.evaluation.summary import labelled_val_metrics, localisation_metrics, detection_metrics
from medad.files import read_json
from medad.model import AnomalyDetector, check_params
from medad.report.figures import to_uint8
from medad.report.html import render_report
from medad.runfolder import RunFolder
from medad.runlock import RunLock
from medad.runtime import resolve_device

log = logging.getLogger("medad")


# -- results and metrics ------------------------------------------------------------------------
def score_images(
    model: AnomalyDetector, images: ImageSet, role: str, top_k: int = 8,
    scored: tuple[dict[str, DetectorOutput], Tensor] | None = None,
) -> ResultSet:
    """Score ``images`` with every fitted score and build one :class:`ImageResult` per image.

    Images, maps and masks are attached to the ``top_k`` most anomalous images and to the
    ``top_k`` lowest-scoring abnormal ones (the report's galleries); every result gets the 2-D
    projection of its embedding in the model's basis (:mod:`medad.evaluation.projection`).
    ``scored`` (every score and the embeddings of ``images``, e.g. ``model.validation_pass_``)
    spares scoring them again.
    """
    outputs, embeddings = scored if scored is not None else model.score_and_embed(images)
    primary = outputs[model.primary]
    scores = primary.scores.cpu().numpy()
    labels = images.labels.numpy()
    shown = set(np.argsort(-scores)[:top_k].tolist())
    abnormal = np.flatnonzero(labels == 1)
    shown |= set(abnormal[np.argsort(scores[abnormal])[:top_k]].tolist())
    projection = project(embeddings.numpy(), model.projection_)
    results = []
    for i, image_id in enumerate(images.ids):
        keep = i in shown
        has_mask = images.has_mask is not None and bool(images.has_mask[i])
        results.append(
            ImageResult(
                id=image_id,
                score=float(scores[i]),
                label=None if labels[i] < 0 else int(labels[i]),
                defect=images.defects[i],
                scores={name: float(out.scores[i]) for name, out in outputs.items()},
                anomaly_map=None if primary.maps is None else primary.maps[i].cpu().numpy().astype(np.float32),
                mask=images.masks[i, 0].numpy() if has_mask else None,
                prediction=None if model.threshold_ is None else int(scores[i] > model.threshold_),
                role=role,
                image=to_uint8(images.images[i]) if keep else None,
                projection=projection[i],
            )
        )
    return ResultSet(results)


def summarize(model: AnomalyDetector, results: ResultSet) -> dict[str, Any]:
    """metrics.json content: primary image metrics at the label-free threshold, every score's
    AUROC/AP, pixel AUROC where maps and masks exist, and the run's bookkeeping."""
    cfg = model.config
    test = ResultSet([r for r in results.with_role("test") if r.label is not None])
    labels = test.labels()
    metrics: dict[str, Any] = {
        "method": cfg.method.name,
        "detector": model.primary,
        "score_names": model.fitted_scores,
        "threshold": model.threshold_,
        "threshold_rule": model.threshold_rule_,
        "n_train": model.n_train_,
        "n_val": len(model.val_scores_),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_abnormal": int((labels == 1).sum()),
        "train_seconds": round(model.train_seconds_, 2),
        "epochs": cfg.train.epochs if model.history_ else 0,  # 0: nothing was pre-trained
        "threshold_quantile": cfg.evaluation.threshold_quantile,
        "select_by": cfg.train.select_by,
        "selected_epoch": model.selected_epoch,
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "seed": cfg.train.seed,
    }
    epoch = model.selected_epoch
    used = [h for h in model.history_ if h["epoch"] == epoch and h.get("sensitivity") is not None]
    if used:  # label-free; `medad compare` ranks runs by it
        metrics["sensitivity_score"] = used[0]["sensitivity"]
        metrics["sensitivity_score_se"] = used[0].get("sensitivity_se")
    primary = model.detectors_[model.primary] if model.primary in model.detectors_ else None  # not: fusion
    reduction = getattr(primary.params, "reduction", None) if primary is not None else None
    if reduction is not None:
        metrics["image_score_from_map"] = reduction
    if not test.has_labels():
        return metrics
    metrics.update(detection_metrics(test, model.threshold_))
    metrics.update(localisation_metrics(test, model.pixel_threshold_, model.pixel_threshold_rule_,
                                        cfg.evaluation.min_region))
    return metrics


# -- writing a run folder -----------------------------------------------------------------------
def write_evaluation(
    model: AnomalyDetector,
    test: ImageSet | None,
    folder: RunFolder,
    *,
    model_dir: Path,
    val: ImageSet | None = None,
    val_scored: tuple[dict[str, DetectorOutput], Tensor] | None = None,
    labelled_val: ImageSet | None = None,
    dataset: str = "",
    diagnostics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Score ``test`` (and ``val`` for the report), write predictions.npz, report.html and, last,
    metrics.json, each atomically: a folder with metrics.json holds a complete evaluation.

    ``model_dir`` (where ``model`` is saved) is recorded in metrics.json; ``val_scored`` is what
    :func:`score_images` may reuse for ``val``; ``diagnostics`` (label-free training diagnostics of
    the method) are added to the metrics."""
    folder.root.mkdir(parents=True, exist_ok=True)
    top_k = model.config.evaluation.top_k
    basis_images = val if val is not None and len(val) else test
    if model.projection_ is None and basis_images is not None and len(basis_images):
        # a model saved before the basis was stored: one basis for both roles all the same
        model.projection_ = fit_projection(model.embed(basis_images).numpy())
    parts = []
    if test is not None and len(test):
        parts.append(score_images(model, test, "test", top_k))
    if val is not None and len(val):
        parts.append(score_images(model, val, "val", top_k=0, scored=val_scored))
    results = ResultSet([r for part in parts for r in part])
    metrics = summarize(model, results)
    metrics["dataset"] = dataset
    metrics["model"] = folder.link_to(model_dir)
    metrics.update(diagnostics or {})
    if labelled_val is not None and results.with_role("test").has_labels():
        metrics["labelled_val"] = labelled_val_metrics(model.decision_function(labelled_val),
                                                       labelled_val.labels.numpy(), results.with_role("test"))
    for warning in evaluation_warnings(metrics):
        log.warning(warning)
    # Keep maps and masks only where the report shows them; metrics above used them all.
    for r in results:
        if r.image is None:
            r.anomaly_map = r.mask = None
    results.save(folder.predictions)
    _render(folder, results, metrics, model.history_, top_k)
    atomic_write_text(folder.metrics, json.dumps(_jsonable(metrics), indent=2))  # last: the evaluation is complete
    return metrics


def _render(folder: RunFolder, results: ResultSet, metrics: dict, history: list[dict], top_k: int) -> Path:
    """(Re-)render the folder's report.html; the config shown is the run's ``config.yaml`` if present."""
    config_path = folder.config
    figures = {p.stem.replace("_", " "): p.read_bytes() for p in sorted(folder.figures.glob("*.png"))}
    return render_report(
        results, metrics, folder.report,
        title=f"medad: {metrics.get('method')} + {metrics.get('detector')} on {metrics.get('dataset') or 'data'}",
        config_yaml=config_path.read_text() if config_path.is_file() else None,
        history=history,
        top_k=top_k,
        figures=figures,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def fingerprint(config: RunConfig, manifest_digest: str) -> str:
    """Hash of what defines the trained weights (not progress bars, devices or thread counts)."""
    data = config.model_dump(mode="json")
    for key in ("progress", "device", "threads", "checkpoint_every", "log"):
        data["train"].pop(key, None)
    if data["train"].get("warmup_epochs") == 0:  # added later: off = the runs checkpointed before it
        data["train"].pop("warmup_epochs")
    data.pop("evaluation", None)
    blob = json.dumps({"config": data, "manifest": manifest_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_run(
    config: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train, evaluate and report: the job behind ``medad train``. Returns the metrics.

    A directory that already holds a run is left alone unless ``resume`` (continue its
    checkpoint) or ``overwrite`` (start again) is given, so no finished run is lost by accident.
    The folder is locked while the run writes it (:class:`~medad.runlock.RunLock`): a second
    training on the same folder fails at once with :class:`~medad.runlock.RunLockedError`.

    Under ``torchrun`` (``medad train --nproc N``) every process runs this: they pre-train
    together, and rank 0 alone takes the lock, writes the folder and returns the metrics (the
    other ranks return ``{}``).
    """
    if config.data.path is None:
        raise ValueError("no data: pass --data PATH or set data.path in the config")
    check_params(config)  # before the folder is created and any image read
    experiment_log.check_available(config.train.log)
    folder = RunFolder(run_dir)
    if folder.root.exists() and not folder.root.is_dir():
        raise NotADirectoryError(f"{folder.root} is a file: the run folder to write (--out) must be a folder")
    joined = distributed.init_from_env(resolve_device(config.train.device))
    try:
        with ExitStack() as stack:
            problem: Exception | None = None
            if distributed.is_main():
                try:  # the lock is taken before the check, so that two starts cannot both pass it
                    stack.enter_context(RunLock(folder.root))
                    if not (resume or overwrite) and folder.holds_run():
                        raise FileExistsError(
                            f"{folder.root} already holds a run: pass --resume to continue it, --overwrite to "
                            "replace it, or choose another --out"
                        )
                except (OSError, RuntimeError) as exc:
                    problem = exc
            problem = distributed.broadcast_object(problem)  # every rank stops on rank 0's refusal
            if problem is not None:
                raise problem
            return _train_locked(config, folder, resume)
    finally:
        if joined:
            distributed.shutdown()


def _train_locked(config: RunConfig, folder: RunFolder, resume: bool) -> dict[str, Any]:
    """The body of :func:`train_run`, run while the folder is locked."""
    main = distributed.is_main()
    if not main:
        config = config.model_copy(update={"train": config.train.model_copy(update={"progress": False})})
        logging.getLogger("medad").setLevel(logging.WARNING)
    splits = load_splits(config.data, seed=config.train.seed)
    if main:
        for bad_id, reason in splits.skipped:
            log.warning("skipped %s: %s", bad_id, reason)
        splits.manifest.write_csv(folder.manifest)
        save_config(config, folder.config)
        if not resume:  # a run that starts over does not continue the curves of the one it replaces
            experiment_log.clear_events(folder.tensorboard)
    digest = splits.manifest.digest()
    log.info("data: %d train, %d val, %d test images", len(splits.train), len(splits.val),
             0 if splits.test is None else len(splits.test))
    model = AnomalyDetector(config)
    with experiment_log.logging_to(experiment_log.open_log(config.train.log if main else [], folder.tensorboard)
                                   ) as run_log:
        model.fit(
            splits.train, splits.val,
            unlabeled=splits.unlabeled,
            checkpoint_path=folder.checkpoint,
            resume=resume,
            fingerprint=fingerprint(config, digest),
        )
        if not main:
            return {}
        model.manifest_sha256_ = digest
        model.save(folder.model)
        method = model.method_  # the trained method, heads included
        method.example_figure(model.prepare(splits.train.images[:4]),
                              folder.figures / f"{config.method.name}_examples.png")
        val = model.prepare(splits.val)
        metrics = write_evaluation(
            model, splits.test, folder, model_dir=folder.model, val=splits.val, val_scored=model.validation_pass_,
            labelled_val=splits.labelled_val,
            dataset=Path(config.data.path).name, diagnostics=method.diagnostics(val) | model.diagnostics(val),
        )
        run_log.final(_jsonable(metrics), config.model_dump(mode="json"), step=metrics["epochs"])
    return metrics


def evaluate_run(
    model_dir: str | Path, data: str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False
) -> tuple[dict, Path]:
    """Score the test split of ``data`` with a saved model: the job behind ``medad evaluate``.

    The results go to ``out_dir``, by default the run's ``eval/<data name>/``; never into a
    training run's own folder or a model folder (the evaluation would replace the run's own
    metrics.json and report), and into a folder already holding an evaluation only with
    ``overwrite``, which deletes that evaluation's files first so that two never mix. The folder
    is locked while it is written (:class:`~medad.runlock.RunLock`)."""
    model = AnomalyDetector.load(model_dir)
    data_cfg = model.config.data.model_copy(update={"path": str(data), "unlabeled": None, "labelled_val": None})
    run = RunFolder.of_model(model_dir)
    out = RunFolder(out_dir) if out_dir else run.evaluation(data)
    with RunLock(out.root):
        _claim_evaluation_folder(out, overwrite)
        test = load_test_split(data_cfg)
        metrics = write_evaluation(model, test, out, model_dir=run.model, dataset=Path(data).name)
    return metrics, out.root


def _claim_evaluation_folder(folder: RunFolder, overwrite: bool) -> None:
    """Refuse a training run or model folder; refuse one holding an evaluation unless
    ``overwrite``, then delete the evaluation's files."""
    if folder.holds_run() or (folder.root / "model.pt").is_file():
        raise FileExistsError(
            f"{folder.root} holds a training run or a model: an evaluation there would replace the run's own "
            "metrics.json and report.html; leave out --out (the default is RUN/eval/<data name>) or choose another "
            "folder"
        )
    held = [path for path in folder.evaluation_files() if path.is_file()]
    if held and not overwrite:
        raise FileExistsError(f"{folder.root} already holds an evaluation ({', '.join(p.name for p in held)}): pass "
                              "--overwrite to replace it, or choose another --out")
    for path in held:
        path.unlink()


def report_run(run_dir: str | Path) -> Path:
    """Re-render ``report.html`` from a run's saved predictions: the job behind ``medad report``."""
    folder = RunFolder(run_dir)
    missing = [p.name for p in (folder.predictions, folder.metrics) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder.root} has no {', '.join(missing)}: run `medad train` or `medad evaluate` "
                                "first")
    results = ResultSet.load(folder.predictions)
    metrics = read_json(folder.metrics)
    model_dir = folder.model_of(metrics)
    meta = read_json(model_dir / "model.json") if model_dir else {}
    top_k = meta.get("config", {}).get("evaluation", {}).get("top_k", 8)
    return _render(folder, results, metrics, meta.get("history", []), top_k)
