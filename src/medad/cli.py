"""The ``medad`` command line: thin wrappers that parse options and call :mod:`medad.pipeline`."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from medad import __version__

app = typer.Typer(
    help="Unsupervised anomaly detection in medical screening images.\n\n"
    "Learn what normal looks like from normal images only, then flag and localise anomalies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


def _fail(exc: BaseException, names: Mapping[str, str] | None = None) -> None:
    """Print the error, one line per problem (no traceback unless MEDAD_DEBUG=1), and exit with
    status 2. A config error names the CLI flag that set the value (``names``: config key -> flag),
    else the config key."""
    from pydantic import ValidationError

    from medad.config import error_lines
    from medad.atomic import WriteError

    if os.environ.get("MEDAD_DEBUG"):
        raise exc
    if isinstance(exc, ValidationError):
        lines = error_lines(exc, names)
    elif (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, WriteError)
          and exc.strerror in (None, os.strerror(exc.errno))):  # the system's bare message: say what it means
        lines = [f"the disk is full (no space left on the device){f' writing {exc.filename}' if exc.filename else ''}"]
    elif isinstance(exc, OSError) and exc.strerror and not exc.filename:  # medad's own message, without "[Errno N]"
        lines = exc.strerror.splitlines()
    else:
        lines = str(exc).splitlines() or [type(exc).__name__]
    for line in lines:
        console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code=2)


_USER_ERRORS = (ValueError, OSError, RuntimeError, KeyError, TypeError, ArithmeticError)
"""What a command reports as a one-line error: bad input, files, and a training that diverged
(FloatingPointError); anything else is a bug and keeps its traceback."""


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"medad {__version__}")
        raise typer.Exit()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the command is, so that it stops as on Ctrl-C: files being written
    atomically are removed, and the command says what it left behind."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _interrupted(exc: KeyboardInterrupt, left: str) -> NoReturn:
    """Say that the command was interrupted and what it ``left``; exit 143 on SIGTERM, 130 on Ctrl-C."""
    term = isinstance(exc, Terminated)
    console.print(f"interrupted ({'SIGTERM' if term else 'Ctrl-C'}): {left}")
    raise typer.Exit(code=143 if term else 130)


@app.callback()
def main(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """medad command line."""
    _setup_logging(quiet)
    # signal handlers live in the main thread; a SIGTERM the caller ignores stays ignored
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        before = signal.signal(signal.SIGTERM, _terminate)
        if before is not None:  # None: a handler not set from Python, which cannot be put back
            ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, before))


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="MVTec-style folder or MedMNIST .npz file."),
    out: Path = typer.Option(..., help="Run directory to write (model/, metrics.json, report.html, ...)."),
    config: Optional[Path] = typer.Option(None, help="YAML config; flags below override it."),
    preset: Optional[str] = typer.Option(
        None, help="Start from a preset (brain-mri, chest-xray, breast-ultrasound, generic; `medad list`); "
        "the config file and the flags override it."
    ),
    budget: Optional[str] = typer.Option(
        None, help="paper: the method's and detector's published budget (image size, epochs, batch, optimiser, "
        "learning rate; docs/methods/) under the config file's values and the flags; cpu: medad's defaults."
    ),
    method: Optional[str] = typer.Option(None, help="Pre-training method, e.g. contrastive."),
    detector: Optional[str] = typer.Option(
        None,
        help="Primary score: mahalanobis, nnd, lh, cosine, padim, or a reconstruction detector "
        "(ae, memae, ae_u, msssim_ae, ddad, igd, fanogan; see `medad list`).",
    ),
    unlabeled: Optional[Path] = typer.Option(
        None, help="Folder or .npz of unlabeled images (labels unknown) for detectors that use them (ddad)."
    ),
    image_size: Optional[int] = typer.Option(None, help="Square image side in pixels."),
    channels: Optional[int] = typer.Option(None, help="1 (grey) or 3 (RGB) channels for every image."),
    epochs: Optional[int] = typer.Option(None, help="Pre-training epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Images per batch."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    seed: Optional[int] = typer.Option(None, help="Seed for every random source."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or auto."),
    precision: Optional[str] = typer.Option(
        None, help="auto (bf16 autocast on a CUDA GPU, fp32 on a CPU), fp32 or bf16; weights and statistics stay "
        "fp32/fp64."
    ),
    select_by: Optional[str] = typer.Option(
        None, help="Checkpoint to keep: last, or sensitivity (label-free; see train.select_margin)."
    ),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints/last.pt if it exists."),
    overwrite: bool = typer.Option(False, help="Replace a run already in OUT."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    log: Optional[list[str]] = typer.Option(
        None, "--log", help="Experiment log to write: tensorboard (OUT/tensorboard/: every epoch's losses, learning "
        "rate and sensitivity score, the final figures; view with `tensorboard --logdir OUT/tensorboard`)."
    ),
    nproc: Optional[int] = typer.Option(
        None, min=1, help="Training processes: starts torchrun with DistributedDataParallel (gloo on CPU, nccl on "
        "CUDA; 1 runs that path in one process); train.batch_size is the global batch. Same as "
        "`torchrun --nproc_per_node N -m medad train ...`. Without it: one plain process."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Any config value as KEY=VALUE (YAML value), e.g. --set method.params.view=local."
    ),
) -> None:
    """Pre-train on normal images, fit the scores, evaluate on the test split, write a report.

    Example:

        medad train --preset brain-mri --data ../shared/data/lgg_brain_mri_dev --out runs/lgg

        medad train --data ../shared/data/lgg_brain_mri_mini --method contrastive \\
            --detector mahalanobis --image-size 64 --channels 3 --epochs 5 --out runs/lgg

        medad train --data data/synthetic --method ccd --set method.params.view=local \\
            --set encoder.width=32 --out runs/ccd-local

        medad train --nproc 2 --preset chest-xray --data ../shared/data/pneumoniamnist.npz --out runs/cx

        medad train --preset generic --data data/synthetic --out runs/demo --log tensorboard

        medad train --device cuda --budget paper --method con2 \\
            --data ../shared/data/chest_xray_covid_224 --out runs/con2
    """
    from medad.config import SHORTCUTS, parse_assignments, resolve_config, shortcut_overrides

    shortcuts = dict(data=None if data is None else str(data), method=method, detector=detector, select_by=select_by,
                     image_size=image_size, channels=channels, epochs=epochs, batch_size=batch_size, lr=lr,
                     seed=seed, device=device, precision=precision, progress=None if progress else False)
    names = {SHORTCUTS[k]: "--" + k.replace("_", "-") for k, v in shortcuts.items() if v is not None}
    names.update({"data.unlabeled": "--unlabeled", "budget": "--budget", "train.log": "--log"})  # key -> flag
    metrics: dict = {}
    try:  # the config is validated before torch and the models are imported: errors come at once
        assignments = parse_assignments(set_)
        names.update({key: f"--set {key}" for key in assignments})
        overrides = {**shortcut_overrides(**shortcuts), **assignments}
        if unlabeled is not None:  # a run-level input (the pipeline loads it), so not an API shortcut
            overrides["data.unlabeled"] = str(unlabeled)
        if log:  # written by the pipeline into the run folder, so not an API shortcut either
            overrides["train.log"] = list(log)
        cfg = resolve_config(config, preset=preset, budget=budget, overrides=overrides)
        start_torchrun = False
        if nproc is not None:  # only then: medad.distributed imports torch
            from medad import distributed

            start_torchrun = not distributed.launched()
        if start_torchrun:
            code = _torchrun(nproc)
        else:
            from medad.pipeline import train_run

            code, metrics = 0, train_run(cfg, out, resume=resume, overwrite=overwrite)
    except _USER_ERRORS as exc:
        _fail(exc, names)
    except KeyboardInterrupt as exc:
        _interrupted(exc, f"continue with the same command plus --resume (checkpoint in {out / 'checkpoints'})")
    if code:
        raise typer.Exit(code)
    if metrics:  # {} on the ranks > 0 of a multi-process run, and after torchrun: rank 0 reports
        _print_summary(metrics, out)


def _torchrun(nproc: int) -> int:
    """Run this ``medad train`` command line again under ``torchrun`` with ``nproc`` processes on
    this machine; its exit status. The workers see ``WORLD_SIZE`` and do not start torchrun again."""
    import subprocess
    import sys

    args, logs, rest = [], [], iter(sys.argv[1:])
    for arg in rest:  # torchrun would read --nproc and --log as abbreviations of its own options (--log-dir)
        if arg in ("--nproc", "--log"):
            value = next(rest, None)
            logs += [value] if arg == "--log" and value is not None else []
        elif arg.startswith("--log="):
            logs.append(arg.partition("=")[2])
        elif not arg.startswith("--nproc="):
            args.append(arg)
    if logs:  # --nproc N drops out; --log X goes as the config value it sets
        args += ["--set", f"train.log=[{', '.join(logs)}]"]
    if "train" not in args:
        raise RuntimeError("--nproc works from the medad command line; in Python, start torchrun yourself")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "medad", *args]
    console.print(f"starting {nproc} training processes: {' '.join(command[1:])}")
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt as exc:
        # torchrun stops its workers on the signal it gets, if it is let live to do so (a kill would
        # orphan them): SIGTERM is passed on; Ctrl-C has reached it already, from the terminal
        if isinstance(exc, Terminated):
            child.terminate()
        try:
            child.wait(timeout=90)  # torchrun waits 30 s for its workers before it kills them
        except subprocess.TimeoutExpired:
            child.kill()
        raise


@app.command()
def evaluate(
    model: Path = typer.Option(..., help="Run directory (or its model/ folder) from `medad train`."),
    data: Path = typer.Option(..., help="Dataset whose test split is scored (MVTec folder or .npz)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL/eval/<data name>); never a "
                                       "training run's own folder."),
    overwrite: bool = typer.Option(False, help="Replace an evaluation already in OUT."),
) -> None:
    """Score a dataset's test split with a trained model; write metrics.json and a report.

    Example:

        medad evaluate --model runs/lgg --data ../shared/data/lgg_brain_mri_mini
    """
    from medad.pipeline import evaluate_run

    try:
        metrics, out_dir = evaluate_run(model, data, out, overwrite=overwrite)
    except _USER_ERRORS as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        _interrupted(exc, "no metrics.json was written (it is written last); run again with --overwrite")
    _print_summary(metrics, out_dir)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    model: Path = typer.Option(..., help="Run directory (or its model/ folder) from `medad train`, or an .onnx "
                                         "file from `medad export`."),
    out: Path = typer.Option(..., help="Folder for scores.csv (and heatmaps/ for spatial scores); must be empty "
                                       "unless --overwrite."),
    batch_size: int = typer.Option(64, min=1, help="Images read and scored at a time."),
    scores: str = typer.Option("primary", help="Scores to compute: primary (the model's own) or all."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto (default: the model's)."),
    heatmaps: bool = typer.Option(True, help="Write heatmaps/ for spatial scores."),
    save_maps: bool = typer.Option(False, help="Also write the raw maps (maps/*.npy) and the lesion masks at the "
                                   "pixel threshold (masks/*.png); for NIfTI inputs also one volume each "
                                   "(maps/*.nii.gz, masks/*.nii.gz) in the input's shape and affine."),
    dicom_out: bool = typer.Option(False, help="For DICOM inputs, also write a DICOM Segmentation of the lesion mask "
                                   "and a Secondary Capture of the heatmap overlay in the source's study "
                                   "(dicom/*.seg.dcm, dicom/*.sc.dcm); needs a model with anomaly maps."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    overwrite: bool = typer.Option(False, help="Write into a folder that is not empty: first delete the files an "
                                   "earlier `medad predict` wrote there (other files are kept)."),
) -> None:
    """Score new images: scores.csv with path, score, label at the model's threshold and the
    calibrated normal_quantile; heatmaps/ for spatial scores. Folders are searched recursively.

    Example:

        medad predict --model runs/lgg ../shared/data/lgg_brain_mri_mini/test/tumor --out runs/lgg/pred
    """
    from medad.prediction import predict_run

    try:
        if scores not in ("primary", "all"):
            raise ValueError(f"--scores must be primary or all, got {scores!r}")
        path = predict_run(model, inputs, out, batch_size=batch_size, scores=scores,  # type: ignore[arg-type]
                           device=device, heatmaps=heatmaps, save_maps=save_maps, dicom_out=dicom_out,
                           progress=None if progress else False, overwrite=overwrite)
    except _USER_ERRORS as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        _interrupted(exc, f"{out} holds no scores.csv (it is written once every image is scored); run again with "
                          "--overwrite to replace the heatmaps written so far")
    console.print(f"scores: {path}")


@app.command()
def export(
    model: Path = typer.Option(..., help="Run directory (or its model/ folder) from `medad train`."),
    out: Path = typer.Option(..., help="The file to write, e.g. model.onnx."),
    format: str = typer.Option("onnx", help="onnx (the only format so far)."),
    check: Path | None = typer.Option(None, help="Images (file or folder) to compare onnxruntime with PyTorch on."),
) -> None:
    """Export a model as one ONNX graph: prepared image batch -> image score (and anomaly map).

    Example:

        medad export --model runs/chest --out runs/chest/model.onnx --check ../shared/data/some/images
    """
    from medad.export import export_onnx

    try:
        if format != "onnx":
            raise ValueError(f"unknown --format {format!r}: onnx is the only export format")
        result = export_onnx(model, out, check_images=check)
    except _USER_ERRORS as exc:
        _fail(exc)
    console.print(f"exported: {result.path} (onnxruntime vs PyTorch on the image scores: max abs diff "
                  f"{result.max_abs_diff:.3g}, relative {result.max_rel_diff:.3g})")


@app.command()
def serve(
    model: Path = typer.Option(..., help="Run directory (or its model/ folder) from `medad train`, or an .onnx "
                                         "file from `medad export`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but this machine's own (loopback) "
                             "is reachable by others, and there is no authentication."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    workdir: Optional[Path] = typer.Option(None, help="The service's folder (uploads, the session's heatmaps and "
                                           "masks): empty, or used by an earlier medad serve. Default: a new "
                                           "temporary folder, printed."),
    max_upload_mb: float = typer.Option(50.0, min=0.001, help="Largest request body; larger ones get 413."),
    queue_size: int = typer.Option(64, min=1, help="Images waiting to be scored; when full, requests get 503 "
                                   "with Retry-After."),
    max_batch: int = typer.Option(16, min=1, help="Most images scored in one model call."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N or auto (default: the model's)."),
) -> None:
    """Serve a model over HTTP: POST images to /v1/score, get scores, decisions, heatmaps and masks
    (docs/service.md); a review page at /review/. Stop with Ctrl-C.

    Example:

        medad serve --model runs/lgg --port 8000

        curl -F files=@scan.png http://127.0.0.1:8000/v1/score
    """
    from medad.service import serve as run_service

    try:
        run_service(model, host=host, port=port, workdir=workdir, max_upload_mb=max_upload_mb,
                    queue_size=queue_size, max_batch=max_batch, device=device)
    except _USER_ERRORS as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        _interrupted(exc, "the service stopped; its folder keeps the session's heatmaps and masks")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Run (or eval) directory with predictions.npz.")) -> None:
    """Re-render report.html from a run's saved predictions and metrics.

    Example:

        medad report runs/lgg
    """
    from medad.pipeline import report_run

    try:
        path = report_run(run_dir)
    except _USER_ERRORS as exc:
        _fail(exc)
    console.print(f"report: {path}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories trained on the same data and seed."),
    margin: float = typer.Option(1.0, min=0, help="Standard errors the best run must lead by to count as better."),
) -> None:
    """Rank runs by Rafiee's label-free sensitivity score (no abnormal image involved), e.g. to
    choose a temperature or a negative weight; says whether the best lead exceeds the noise.

    Example:

        medad compare runs/dino-lambda0.5 runs/dino-lambda1 runs/dino-lambda2
    """
    import math

    from medad.compare import compare_runs, lead_in_standard_errors

    try:
        rows = compare_runs(runs)
    except _USER_ERRORS as exc:
        _fail(exc)
    table = Table("run", "method", "score", "epoch", "sensitivity score", "± SE", "val loss")
    for r in rows:
        table.add_row(r.run, r.method, r.detector, str(r.epoch), f"{r.sensitivity_score:.4f}",
                      "—" if r.standard_error is None else f"{r.standard_error:.4f}",
                      "—" if r.val_loss is None else f"{r.val_loss:.4g}")
    console.print(table)
    lead = lead_in_standard_errors(rows)
    if math.isnan(lead):
        verdict = "no standard errors recorded (older runs): compare the scores with care"
    elif lead > margin:
        verdict = f"{rows[0].run} leads by {lead:.1f} standard errors: better beyond the score's noise"
    else:
        verdict = (f"{rows[0].run} leads by only {lead:.1f} standard errors (< {margin:g}): within the score's noise; "
                   "prefer the default or simpler setting")
    console.print(verdict)


@app.command()
def synth(
    out: Path = typer.Option(..., help="Folder to write (MVTec layout)."),
    size: int = typer.Option(64, min=16, help="Image side in pixels (at least 16: data.synthetic.MIN_PHANTOM_SIZE)."),
    n_train: int = typer.Option(200, min=1, help="Normal training images."),
    n_test_normal: int = typer.Option(50, min=0, help="Normal test images."),
    n_test_abnormal: int = typer.Option(50, min=0, help="Test images with synthetic lesions (with masks)."),
    seed: int = typer.Option(0, min=0, help="Seed; the same seed writes identical files."),
) -> None:
    """Write the built-in synthetic phantom dataset (normal images + lesions with exact masks).

    Example:

        medad synth --out data/synthetic --size 64
    """
    from medad.data.synthetic import write_phantom_dataset

    try:
        write_phantom_dataset(out, n_train=n_train, n_test_normal=n_test_normal,
                              n_test_abnormal=n_test_abnormal, size=size, seed=seed)
    except _USER_ERRORS as exc:
        _fail(exc)
    console.print(f"synthetic dataset: {out}")


@app.command("list")
def list_components() -> None:
    """List the available pre-training methods, detectors (scores) and presets.

    Example:

        medad list
    """
    from medad.catalog import DETECTORS, METHODS
    from medad.presets import PRESETS

    typer.echo("methods:   " + ", ".join(sorted(METHODS)))
    typer.echo("detectors: " + ", ".join(sorted(DETECTORS)))
    typer.echo("presets (medad train --preset NAME; docs/presets.md):")
    for name, preset in PRESETS.items():
        typer.echo(f"  {name:<18} {preset.summary}")


def _print_summary(metrics: dict, out: Path) -> None:
    keys = ("image_auroc", "image_ap", "sensitivity", "specificity", "accuracy", "threshold", "pixel_auroc")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    console.print(f"{metrics.get('method')} + {metrics.get('detector')}: " + (", ".join(parts) or "no test labels"))
    console.print(f"metrics: {Path(out) / 'metrics.json'}")
    console.print(f"report:  {Path(out) / 'report.html'}")
