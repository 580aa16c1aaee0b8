"""``medad serve``: a saved model as an HTTP scoring service (FastAPI + uvicorn, 127.0.0.1 by default).

``POST /v1/score`` takes one or more images as multipart parts named ``files`` and answers, per
image, the score, the calibrated score (share of validation normals scoring lower), the decision
at the model's threshold and links to the image as the model read it, its heatmap and its lesion
mask; ``GET /v1/results`` lists every image scored since the start. The contract (field names,
status codes) is in ``docs/service.md``; the review page (``src/medad/review/``) is built on it.

How a request flows (one job each, in this module):

* :class:`UploadReader` streams the body into files :class:`ServiceFolder` names itself
  (``uploads/<random>.<known ending>``; the client's file name is only displayed, never part of a
  path), counting bytes: over ``--max-upload-mb`` is a 413 before or while it arrives, never read
  into memory whole. The files are decoded as ``medad predict`` decodes them
  (:meth:`~medad.data.preprocessor.Preprocessor.read_files`) in a worker thread of the server and
  deleted; an empty, unreadable or unusable upload is a 422 naming it, and nothing of the request
  is scored.
* :class:`Service` puts the decoded images into a bounded queue (:class:`BatchQueue`; a request
  that does not fit is a 503 with ``Retry-After``). One thread owns the model: it takes up to
  ``--max-batch`` waiting images at once, scores them in one call of :class:`~medad.prediction.Scorer`
  (the scoring of ``medad predict``), writes ``image.png``, ``heatmap.png`` and ``mask.png`` (and,
  for a single-frame DICOM upload, kept until then, the DICOM SEG and SC of ``predict --dicom-out``)
  into ``results/<id>/`` and hands each request its results. Concurrent requests are thus batched without
  waiting for one another: whatever arrived while the model was busy is the next batch.
* The results of the session are kept in memory (:class:`Result`) and looked up by id; a URL's id
  is a key, never a path.

Nothing is written outside the service's folder (a new temporary folder, or ``--workdir``: empty or
one an earlier ``medad serve`` used, whose files it then deletes); no pickle, no shell.

>>> Service.loopback("127.0.0.1"), Service.loopback("localhost"), Service.loopback("0.0.0.0")
(True, True, False)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from PIL import Image
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from medad import __version__
from medad.data.folder import FileItem
from medad.data.imageset import UNKNOWN, ImageSet
from medad.data.dicom_outputs import DicomOutputError, OutputSeries
from medad.data.readers import IMAGE_EXTENSIONS, ImageReadError, is_dicom, suffix_of
from medad.model import AnomalyDetector
from medad.outputs import OutputFolder
from medad.prediction import Scored, Scorer, load_model
from medad.runlock import LOCK_NAME, RunLock

if TYPE_CHECKING:
    from medad.export import OnnxModel

log = logging.getLogger("medad")

REVIEW = Path(__file__).parent / "review"
"""The review page's static files, served at ``/review/``."""
KINDS = {"image.png": "image/png", "heatmap.png": "image/png", "mask.png": "image/png",
         "seg.dcm": "application/dicom", "sc.dcm": "application/dicom"}
"""The files of a result, in ``results/<id>/``, and their media types; ``seg.dcm`` / ``sc.dcm``
(DICOM Segmentation and Secondary Capture) for a single-frame DICOM upload to a model with maps."""
DICOM_STEM = "result"
""":meth:`~medad.prediction.Scored.write_dicom` writes ``result.seg.dcm`` and ``result.sc.dcm``."""
MAX_NAME = 255
"""Characters of an uploaded file's name kept for display."""


class ServiceError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason (and headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


# --- the service's folder ------------------------------------------------------------------------


class ServiceFolder:
    """The one folder the service writes to: ``uploads/`` (each upload until it is decoded) and
    ``results/<id>/`` (the session's pictures). ``root`` None makes a new temporary folder; a given
    folder must be empty or one an earlier ``medad serve`` used (it holds the record
    ``.medad-serve`` of the files written there: those are deleted, :mod:`medad.outputs`). Locked
    while in use (:mod:`medad.runlock`): two services never share a folder.

    >>> with tempfile.TemporaryDirectory() as tmp, ServiceFolder(Path(tmp) / "work") as folder:
    ...     _ = folder.new_upload("../../etc/passwd.png").write_bytes(b"x")
    ...     [p.relative_to(tmp).parts[:2] for p in Path(tmp).rglob("*.png")]
    [('work', 'uploads')]
    """

    def __init__(self, root: str | Path | None):
        self.root = Path(tempfile.mkdtemp(prefix="medad-serve-")) if root is None else Path(root)
        self._lock = RunLock(self.root)
        self._files = OutputFolder(self.root, "serve")
        self._guard = threading.Lock()  # the record is appended to by the request threads and the model's

    def __enter__(self) -> ServiceFolder:
        self._lock.acquire()
        try:
            held = sorted(p.name for p in self.root.iterdir() if p.name not in (LOCK_NAME, self._files.record.name))
            if held and not self._files.record.is_file():
                raise FileExistsError(f"--workdir {self.root} is not empty ({', '.join(held[:3])}"
                                      f"{', ...' if len(held) > 3 else ''}) and was not used by medad serve: choose "
                                      "an empty or new folder")
            self._files.claim(overwrite=True)  # deletes what an earlier session wrote
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._files.__exit__(None, None, None)
        self._lock.release()

    def path(self, relative: str | Path) -> Path:
        """``root / relative``, recorded (so that the next session deletes it), folders created."""
        with self._guard:
            return self._files.path(relative)

    def new_upload(self, client_name: str) -> Path:
        """A new file for an upload: a random name, with the ending of ``client_name`` only when it
        is an image ending medad reads (the readers pick the decoder by ending)."""
        suffix = suffix_of(client_name)
        return self.path(Path("uploads") / (secrets.token_hex(16) + (suffix if suffix in IMAGE_EXTENSIONS else "")))


# --- the request body --------------------------------------------------------------------------------


@dataclass
class Upload:
    """One uploaded file: the client's name (displayed, never a path) and where it was stored."""

    filename: str
    path: Path
    size: int = 0


class UploadReader:
    """The parts named ``files`` of a ``multipart/form-data`` body, streamed into files of the
    service's ``folder`` as the chunks arrive (python-multipart's streaming parser); other parts
    are ignored. More than ``max_files`` files is refused. :meth:`discard` deletes the files."""

    def __init__(self, content_type: str, folder: ServiceFolder, max_files: int):
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise ServiceError(422, "send the images as multipart/form-data, one part named 'files' per image")
        self.folder, self.max_files = folder, max_files
        self.uploads: list[Upload] = []
        self._file: Any = None
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._parser = MultipartParser(options[b"boundary"], {
            "on_part_begin": self._begin, "on_header_field": self._on_field, "on_header_value": self._on_value,
            "on_header_end": self._header_end, "on_headers_finished": self._open, "on_part_data": self._data,
            "on_part_end": self._close,
        })

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except ServiceError:
            raise
        except Exception as exc:  # python-multipart's parse errors
            raise ServiceError(422, f"malformed multipart body ({exc})") from None

    def finish(self) -> list[Upload]:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise ServiceError(422, f"malformed multipart body ({exc})") from None
        if self._file is not None:
            raise ServiceError(422, "malformed multipart body (it ends inside a part)")
        if not self.uploads:
            raise ServiceError(422, "no image: send one or more multipart parts named 'files'")
        return self.uploads

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for upload in self.uploads:
            upload.path.unlink(missing_ok=True)

    def _begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _open(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        if options.get(b"name") != b"files":
            return
        if len(self.uploads) >= self.max_files:
            raise ServiceError(413, f"more than {self.max_files} files in one request (the queue holds "
                                    f"{self.max_files} images; --queue-size)")
        raw = options.get(b"filename", b"")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = raw.decode("latin-1")
        name = "".join(c for c in name if c.isprintable())[:MAX_NAME] or f"upload {len(self.uploads) + 1}"
        upload = Upload(name, self.folder.new_upload(name))
        self.uploads.append(upload)
        self._file = open(upload.path, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            self.uploads[-1].size += end - start

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_uploads(request: Request, folder: ServiceFolder, limit: int, max_files: int) -> list[Upload]:
    """The uploads of ``request`` (:class:`UploadReader`), refused with a 413 as soon as the body
    is larger than ``limit`` bytes: by its ``Content-Length`` before reading, or while it streams."""
    too_large = ServiceError(413, f"upload larger than the limit of {limit / 2**20:.3g} MB (--max-upload-mb)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    reader = UploadReader(request.headers.get("content-type", ""), folder, max_files)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            reader.write(chunk)
        return reader.finish()
    except ClientDisconnect:
        reader.discard()
        raise ServiceError(400, "the client closed the connection during the upload") from None
    except BaseException:
        reader.discard()
        raise


# --- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One scored image of the session (the JSON *result* object of docs/service.md)."""

    id: str
    filename: str
    score: float | None
    calibrated: float | None
    abnormal: bool | None
    threshold: float | None
    pictures: tuple[str, ...]  # the KINDS written, in results/<id>/ (the DICOM ones as result.<kind>)
    scored_at: str

    def json(self) -> dict[str, Any]:
        url = f"/v1/results/{self.id}/"
        return {"id": self.id, "filename": self.filename, "score": self.score, "calibrated": self.calibrated,
                "abnormal": self.abnormal, "threshold": self.threshold, "image_url": url + "image.png",
                "heatmap_url": url + "heatmap.png" if "heatmap.png" in self.pictures else None,
                "mask_url": url + "mask.png" if "mask.png" in self.pictures else None,
                "seg_url": url + "seg.dcm" if "seg.dcm" in self.pictures else None,
                "sc_url": url + "sc.dcm" if "sc.dcm" in self.pictures else None, "scored_at": self.scored_at}


def _finite(value: Any) -> float | None:
    """A float for JSON: None for NaN or an infinity (or None)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclass
class Job:
    """One decoded image waiting to be scored, and where its result goes."""

    image: torch.Tensor  # [C, S, S] as read
    filename: str
    result: Future
    source: Path | None = None  # a DICOM upload kept for its DICOM outputs, deleted once scored

    def done(self, result: Result | None = None, error: ServiceError | None = None) -> None:
        """Hand the request its result (or error) and delete the kept upload."""
        if self.source is not None:
            self.source.unlink(missing_ok=True)
        if error is None:
            self.result.set_result(result)
        else:
            self.result.set_exception(error)


class BatchQueue:
    """A bounded FIFO of :class:`Job` s: :meth:`put_all` adds a request's images all or none,
    :meth:`take` removes up to a batch of them (waiting for the first).

    >>> q = BatchQueue(3)
    >>> q.put_all([1, 2]), q.put_all([3, 4]), q.take(5), len(q)
    (True, False, [1, 2], 0)
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: deque = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_all(self, items: Iterable) -> bool:
        items = list(items)
        with self._ready:
            if self._closed or len(self._items) + len(items) > self.capacity:
                return False
            self._items.extend(items)
            self._ready.notify()
            return True

    def take(self, most: int) -> list:
        """Up to ``most`` items, waiting until there is one; [] once closed and empty."""
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed)
            return [self._items.popleft() for _ in range(min(most, len(self._items)))]

    def close(self) -> list:
        """Refuse new items, wake the taker; the items still waiting (to be cancelled)."""
        with self._ready:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._ready.notify_all()
            return left


# --- the service ---------------------------------------------------------------------------------------


class Service:
    """A model, the queue of images waiting for it, the thread that scores them in batches, and
    the session's results (see the module docstring). :meth:`start` / :meth:`stop` the thread."""

    def __init__(self, model: AnomalyDetector | OnnxModel, folder: ServiceFolder, *, model_path: str | Path = "",
                 max_upload_mb: float = 50, queue_size: int = 64, max_batch: int = 16):
        if queue_size < 1 or max_batch < 1 or max_upload_mb <= 0:
            raise ValueError(f"--queue-size and --max-batch must be >= 1 and --max-upload-mb > 0 (got {queue_size}, "
                             f"{max_batch}, {max_upload_mb})")
        self.model, self.folder, self.model_path = model, folder, Path(model_path)
        self.scorer: Callable[[ImageSet], Scored] = Scorer(model)
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.max_batch = max_batch
        self.queue = BatchQueue(queue_size)
        self.results: dict[str, Result] = {}  # in scoring order
        self._series: dict[str, OutputSeries] = {}  # the DICOM outputs' series, one pair per source series
        self.batches = 0  # model calls so far
        self._batch_seconds = 0.0  # of the last one: the Retry-After estimate
        self._guard = threading.Lock()
        self._worker: threading.Thread | None = None

    @staticmethod
    def loopback(host: str) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        try:
            return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    # -- the model's thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="medad-scoring", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        for job in self.queue.close():
            job.done(error=ServiceError(503, "the service is shutting down"))
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _work(self) -> None:
        while jobs := self.queue.take(self.max_batch):
            start = time.perf_counter()
            try:
                images = torch.stack([job.image for job in jobs])
                batch = self.scorer(ImageSet(images, torch.full((len(jobs),), UNKNOWN), [j.filename for j in jobs]))
                results = [self._keep(batch, i, job) for i, job in enumerate(jobs)]
            except Exception as exc:  # a fault of the model or the disk, not of the input: reported, and go on
                log.exception("scoring a batch of %d images failed", len(jobs))
                for job in jobs:
                    job.done(error=ServiceError(500, f"scoring failed: {type(exc).__name__}: {exc}"))
                continue
            self.batches += 1
            self._batch_seconds = time.perf_counter() - start
            for job, result in zip(jobs, results):
                job.done(result)

    def _keep(self, batch: Scored, i: int, job: Job) -> Result:
        """Write image ``i``'s pictures (and, for a kept DICOM upload, its DICOM outputs) into
        ``results/<id>/`` and add its :class:`Result`."""
        result_id = secrets.token_hex(16)
        folder = Path("results") / result_id
        pictures: dict[str, np.ndarray] = {"image.png": _hwc(batch.image(i))}
        if batch.maps is not None:
            pictures["heatmap.png"] = batch.heatmap_rgba(i)
        if batch.masks is not None:
            pictures["mask.png"] = batch.masks[i]
        for kind, pixels in pictures.items():
            Image.fromarray(pixels).save(self.folder.path(folder / kind), compress_level=1)
        kinds = list(pictures)
        if job.source is not None and batch.masks is not None:
            for kind in ("seg.dcm", "sc.dcm"):
                self.folder.path(folder / f"{DICOM_STEM}.{kind}")  # recorded before written
            try:
                batch.write_dicom(i, job.source, self.folder.root / folder, DICOM_STEM, self._series)
                kinds += ["seg.dcm", "sc.dcm"]
            except (DicomOutputError, ImageReadError) as exc:  # e.g. no Study UID: scored, without DICOM outputs
                log.warning("%s", str(exc).replace(str(job.source), job.filename))
        model = self.model
        result = Result(
            id=result_id, filename=job.filename, score=_finite(batch.scores[i]),
            calibrated=None if batch.calibrated is None else _finite(batch.calibrated[i]),
            abnormal=None if batch.abnormal is None else bool(batch.abnormal[i]), threshold=_finite(model.threshold_),
            pictures=tuple(kinds), scored_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        )
        with self._guard:
            self.results[result_id] = result
        return result

    # -- requests ------------------------------------------------------------------------------------
    def decode(self, uploads: list[Upload]) -> list[Job]:
        """Every image of ``uploads`` as the model reads it, with its display name (``name#z=12``
        for a slice), as jobs; a :class:`ServiceError` 422 naming the first upload that is not a
        usable image. A single-frame DICOM upload is the job's ``source`` (kept for its DICOM outputs)
        when the model has a pixel threshold; the caller deletes the other uploads."""
        preprocessor, decoded = self.model.preprocessor, []
        outputs = self.model.pixel_threshold_ is not None
        for upload in uploads:
            if upload.size == 0:
                raise ServiceError(422, f"{upload.filename}: empty file (0 bytes)")
            try:
                images = preprocessor.read_files([FileItem(upload.path)], on_error="raise").images
            except ImageReadError as exc:
                raise ServiceError(422, f"{upload.filename}: {exc.problem}") from None
            except (ValueError, RuntimeError, OSError) as exc:  # e.g. NaN pixels, an image that cannot be resized
                raise ServiceError(422, f"{upload.filename}: {str(exc).replace(str(upload.path), 'the file')}") \
                    from None
            source = upload.path if outputs and len(images) == 1 and is_dicom(upload.path) else None
            for image, image_id in zip(images.images, images.ids):
                _, mark, part = image_id.partition("#")
                decoded.append(Job(image, upload.filename + mark + part, Future(), source))
        return decoded

    def submit(self, jobs: list[Job]) -> list[Future]:
        """Queue the decoded images of one request (all or none); a :class:`ServiceError` 503 with
        ``Retry-After`` when the queue cannot take them, 413 when it never could."""
        if len(jobs) > self.queue.capacity:
            raise ServiceError(413, f"{len(jobs)} images in one request, more than the queue holds "
                                    f"({self.queue.capacity}; --queue-size)")
        if not self.queue.put_all(jobs):
            waiting = len(self.queue) / self.max_batch + 1
            retry = max(1, math.ceil(waiting * self._batch_seconds))
            raise ServiceError(503, f"the queue is full ({self.queue.capacity} images waiting); retry in {retry} s",
                               {"Retry-After": str(retry)})
        return [job.result for job in jobs]

    def listed(self) -> list[Result]:
        """The session's results so far, in scoring order."""
        with self._guard:
            return list(self.results.values())

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``."""
        model, pre = self.model, self.model.preprocessor
        config = model.config
        name = f"{config.method.name} + {model.primary}" + (f" ({config.preset})" if config.preset else "")
        path = self.model_path.resolve() if self.model_path.parts else Path("")
        run = path.parent.name if path.name == "model" else path.name
        return {"name": name, "detector": config.detector.name, "score_name": model.primary,
                "threshold": _finite(model.threshold_), "threshold_rule": model.threshold_rule_,
                "image_size": pre.image_size, "channels": pre.channels, "preprocessing": pre.metadata(),
                "manifest_sha256": model.manifest_sha256_ or None, "medad_version": __version__, "run": run}

    def calibration(self) -> dict[str, Any]:
        """``GET /v1/calibration``: the validation normals' scores, sorted."""
        return {"score_name": self.model.primary, "threshold": _finite(self.model.threshold_),
                "normal_scores": sorted(float(s) for s in self.model.val_scores_)}


def _hwc(image_chw: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` uint8 as Pillow takes it: ``[H, W]`` grey or ``[H, W, 3]`` RGB."""
    return image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)


# --- the HTTP application ----------------------------------------------------------------------------


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service`` (docs/service.md); its lifespan starts and stops the
    model's thread."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="medad", version=__version__, lifespan=lifespan,
                  description="Unsupervised anomaly detection: score images with a trained medad model.")

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)

    @app.post("/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        uploads = await receive_uploads(request, service.folder, service.max_upload_bytes, service.queue.capacity)
        jobs: list[Job] = []
        try:
            jobs = await run_in_threadpool(service.decode, uploads)
            futures = service.submit(jobs)
        except BaseException:
            jobs = []  # nothing queued: every upload goes
            raise
        finally:
            kept = {job.source for job in jobs}
            for upload in uploads:
                if upload.path not in kept:
                    upload.path.unlink(missing_ok=True)
        results = [await asyncio.wrap_future(future) for future in futures]
        return {"results": [r.json() for r in results]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queue": len(service.queue), "scored": len(service.results)}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return service.model_info()

    @app.get("/v1/calibration")
    async def calibration() -> dict[str, Any]:
        return service.calibration()

    @app.get("/v1/results")
    async def results() -> dict[str, Any]:
        return {"results": [r.json() for r in service.listed()]}

    @app.get("/v1/results/{result_id}/{kind}")
    async def picture(result_id: str, kind: str) -> FileResponse:
        result = service.results.get(result_id)
        if result is None:
            raise ServiceError(404, f"no result {result_id!r} in this session")
        if kind not in result.pictures:
            what = f"result {result_id} has no {kind}" if kind in KINDS else f"unknown picture {kind!r} (one of "\
                f"{', '.join(KINDS)})"
            raise ServiceError(404, what)
        if kind.endswith(".dcm"):  # a download named by the result
            return FileResponse(service.folder.root / "results" / result.id / f"{DICOM_STEM}.{kind}",
                                media_type=KINDS[kind], filename=f"{result.id}.{kind}")
        return FileResponse(service.folder.root / "results" / result.id / kind, media_type=KINDS[kind])

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/review/", status_code=307)

    if (REVIEW / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/review", StaticFiles(directory=REVIEW, html=True), name="review")
    else:
        @app.get("/review/{rest:path}", include_in_schema=False)
        async def no_review(rest: str) -> JSONResponse:
            return JSONResponse({"detail": f"the review page is not installed ({REVIEW} has no index.html)"}, 404)

    return app


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workdir: str | Path | None = None,
          max_upload_mb: float = 50, queue_size: int = 64, max_batch: int = 16, device: str | None = None) -> None:
    """``medad serve``: load the model, take the folder, answer HTTP on ``host:port`` until stopped."""
    import uvicorn

    if not Path(model_path).exists():
        raise FileNotFoundError(f"--model {model_path} not found: give a run folder from `medad train` or an .onnx "
                                "file from `medad export`")
    model = load_model(model_path, device)
    with ServiceFolder(workdir) as folder:
        service = Service(model, folder, model_path=model_path, max_upload_mb=max_upload_mb, queue_size=queue_size,
                          max_batch=max_batch)
        if not Service.loopback(host):
            log.warning("listening on %s: anyone who can reach this port can score images and see every result; "
                        "medad serve has no authentication", host)
        log.info("medad serve: model %s, results in %s; review page http://%s:%d/review/", model_path, folder.root,
                 host, port)
        uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="info")).run()
