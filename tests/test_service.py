"""``medad serve`` (issue 30): every endpoint and field of the contract (docs/service.md), the scores
of ``medad predict`` for the same files, batching of concurrent requests, the bounded queue (503),
the upload limit (413), bad input (422, and the server goes on serving), unknown results (404),
and nothing written outside the service's folder."""

from __future__ import annotations

import csv
import io
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from medad import AnomalyDetector, service as service_module
from medad.cli import app as cli
from medad.config import RunConfig
from medad.data.folder import FileItem
from medad.data.synthetic import dicom_dataset, make_phantoms
from medad.evaluation.calibration import normal_quantile
from medad.export import export_onnx
from medad.prediction import load_model, predict_run
from medad.report.figures import to_uint8
from medad.runlock import RunLockedError
from medad.service import Service, ServiceFolder, create_app

PRINTED = 5e-6
"""scores.csv prints 6 significant digits: half a unit of the last one, relative."""


def _fit(folder: Path, detector: str, params: dict) -> Path:
    cfg = RunConfig.model_validate({
        "data": {"image_size": 32, "val_fraction": 0.25}, "encoder": {"width": 8}, "method": {"name": "none"},
        "detector": {"name": detector, "params": params, "also": []}, "train": {"epochs": 0, "progress": False},
    })
    AnomalyDetector(cfg).fit(make_phantoms(24, 32, seed=0)[0]).save(folder / "model")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder with a spatial model (PaDiM: maps, pixel threshold), fitted in a second."""
    return _fit(tmp_path_factory.mktemp("padim-run"), "padim", {"d": 16})


@pytest.fixture(scope="module")
def loaded(run) -> AnomalyDetector:
    return AnomalyDetector.load(run)


@contextmanager
def serving(model, workdir: Path, model_path: Path | str = "", **settings):
    """A started service on ``model`` in ``workdir`` and a client of its app."""
    with ServiceFolder(workdir) as folder:
        service = Service(model, folder, model_path=model_path, **settings)
        with TestClient(create_app(service)) as client:
            yield client, service


def hold(service: Service) -> tuple[threading.Event, threading.Event, list[int]]:
    """Make the model's thread wait, once it has taken a batch, until the second event is set;
    the first is set when it waits; the list gets the size of every batch."""
    held, gate, sizes, scorer = threading.Event(), threading.Event(), [], service.scorer
    service.scorer = lambda images: (sizes.append(len(images)), held.set(), gate.wait(10), scorer(images))[3]
    return held, gate, sizes


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


LESIONS = [png((x[0].numpy() * 255).round().astype(np.uint8)) for x in make_phantoms(4, 40, seed=1, lesion=True)[0]]


def files(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


def dicom(pixels: np.ndarray | None) -> bytes:
    ds = dicom_dataset(pixels, 12, PatientID="P1")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_score_answers_every_field_and_every_endpoint(run, loaded, tmp_path):
    with serving(loaded, tmp_path / "work", run) as (client, service):
        answer = client.post("/v1/score", files=files(("a.png", LESIONS[0]), ("rgb.png", png(np.stack([
            np.full((48, 36), 90, np.uint8)] * 3, axis=-1)))))
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert [r["filename"] for r in results] == ["a.png", "rgb.png"]
        for r in results:
            assert set(r) == {"id", "filename", "score", "calibrated", "abnormal", "threshold", "image_url",
                              "heatmap_url", "mask_url", "seg_url", "sc_url", "scored_at"}
            assert re.fullmatch("[0-9a-f]{32}", r["id"])
            assert r["threshold"] == pytest.approx(loaded.threshold_)
            assert r["abnormal"] == (r["score"] > loaded.threshold_)
            assert r["calibrated"] == pytest.approx(normal_quantile([r["score"]], loaded.val_scores_)[0])
            scored_at = datetime.fromisoformat(r["scored_at"])
            assert scored_at.utcoffset().total_seconds() == 0
            assert abs((datetime.now(timezone.utc) - scored_at).total_seconds()) < 60
            base = f"/v1/results/{r['id']}/"
            assert (r["image_url"], r["heatmap_url"], r["mask_url"]) == (base + "image.png", base + "heatmap.png",
                                                                        base + "mask.png")

        pictures = {kind: client.get(results[0][f"{kind}_url"]) for kind in ("image", "heatmap", "mask")}
        assert all(p.status_code == 200 and p.headers["content-type"] == "image/png" for p in pictures.values())
        image, heatmap, mask = (Image.open(io.BytesIO(p.content)) for p in pictures.values())
        assert (image.mode, heatmap.mode, mask.mode) == ("L", "RGBA", "L")
        assert image.size == heatmap.size == mask.size == (32, 32)
        path = tmp_path / "a.png"
        path.write_bytes(LESIONS[0])
        read = loaded.preprocessor.read_files([FileItem(path)]).images
        assert np.array_equal(np.asarray(image), to_uint8(read.images[0])[0])  # the image as the model reads it
        expected_mask = loaded.anomaly_map(read)[0] > loaded.pixel_threshold_
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert np.mean((np.asarray(mask) == 255) != expected_mask) < 0.01  # at the pixel threshold
        assert np.asarray(heatmap)[..., 3].min() > 0  # an overlay everywhere, by colour
        assert Image.open(io.BytesIO(client.get(results[1]["image_url"]).content)).mode == "L"  # RGB -> 1 channel

        listed = client.get("/v1/results").json()["results"]
        assert listed == results
        assert client.get("/health").json() == {"status": "ok", "queue": 0, "scored": 2}
        info = client.get("/v1/model").json()
        assert info == {"name": "none + padim", "detector": "padim", "score_name": "padim",
                        "threshold": pytest.approx(loaded.threshold_), "threshold_rule": loaded.threshold_rule_,
                        "image_size": 32, "channels": 1, "preprocessing": loaded.preprocessor.metadata(),
                        "manifest_sha256": None, "medad_version": service_module.__version__,
                        "run": run.name}
        calibration = client.get("/v1/calibration").json()
        assert calibration["score_name"] == "padim" and calibration["threshold"] == pytest.approx(loaded.threshold_)
        assert calibration["normal_scores"] == pytest.approx(sorted(loaded.val_scores_))
        assert client.get("/", follow_redirects=False).status_code == 307
        assert client.get("/", follow_redirects=False).headers["location"] == "/review/"


def test_the_review_page_is_served_from_the_package_folder_or_missing_with_a_message(loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "REVIEW", tmp_path / "review")
    with serving(loaded, tmp_path / "w1") as (client, _):
        missing = client.get("/review/")
        assert missing.status_code == 404 and "review page is not installed" in missing.json()["detail"]
    (tmp_path / "review").mkdir()
    (tmp_path / "review" / "index.html").write_text("<title>review</title>")
    with serving(loaded, tmp_path / "w2") as (client, _):
        page = client.get("/review/")
        assert page.status_code == 200 and "<title>review</title>" in page.text


def test_the_scores_are_medad_predict_s_for_the_same_files(run, loaded, tmp_path):
    """PNG, 16-bit PNG, JPEG, DICOM and NIfTI, decoded and scored by predict's code; one request
    is one batch, as in predict, so only scores.csv's printing differs."""
    rng = np.random.default_rng(3)
    inputs = {
        "lesion.png": LESIONS[1],
        "deep.png": png((rng.random((40, 40)) * 65535).astype(np.uint16)),
        "photo.jpg": None,
        "scan.dcm": dicom((rng.random((36, 36)) * 4095).astype(np.uint16)),
        "volume.nii.gz": None,
    }
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray((rng.random((50, 40, 3)) * 255).astype(np.uint8)).save(folder / "photo.jpg", quality=90)
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (40, 40, 5)).astype(np.float32), np.eye(4)), folder / "volume.nii.gz")
    for name, data in inputs.items():
        if data is not None:
            (folder / name).write_bytes(data)
    with open(predict_run(run, [folder / name for name in inputs], tmp_path / "pred", progress=False)) as fh:
        expected = list(csv.DictReader(fh))
    with serving(loaded, tmp_path / "work") as (client, _):
        got = client.post("/v1/score", files=files(*((n, (folder / n).read_bytes()) for n in inputs))).json()["results"]
    assert [r["filename"] for r in got] == [Path(e["path"]).name for e in expected] == [*list(inputs)[:4],
                                                                                        "volume.nii.gz#z=2"]
    for r, e in zip(got, expected):
        assert r["score"] == pytest.approx(float(e["score"]), rel=PRINTED)
        assert int(r["abnormal"]) == int(e["label"])
        assert r["calibrated"] == pytest.approx(float(e["normal_quantile"]), abs=5e-5)  # printed with 4 decimals


def test_a_dicom_upload_gets_the_dicom_outputs_of_medad_predict(run, loaded, tmp_path, caplog):
    """Issue 30 item 3 in the service: a single-frame DICOM upload gets a DICOM Segmentation and a
    Secondary Capture, the files ``medad predict --dicom-out`` writes for the same file (each
    scored alone, so in a batch of one), referencing the source; its upload is deleted once scored.
    A PNG, and a DICOM without the identifiers to reference (named in a warning), get none."""
    from test_dicom_outputs import cr, seg_mask  # tests/ is on sys.path

    source = cr(tmp_path / "in" / "chest.dcm")
    predict_run(run, [tmp_path / "in" / "chest.dcm"], tmp_path / "pred", dicom_out=True, progress=False)
    (expected_seg,), (expected_sc,) = (list((tmp_path / "pred" / "dicom").rglob(f"*.{k}.dcm")) for k in ("seg", "sc"))
    with serving(loaded, tmp_path / "work") as (client, _):
        result = client.post("/v1/score", files=files(("chest.dcm", (tmp_path / "in" / "chest.dcm").read_bytes()))
                             ).json()["results"][0]
        others = client.post("/v1/score", files=files(("a.png", LESIONS[0]), ("bare.dcm", dicom(
            (np.random.default_rng(0).random((36, 36)) * 4095).astype(np.uint16))))).json()["results"]
        got = {}
        for kind in ("seg", "sc"):
            answer = client.get(result[f"{kind}_url"])
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom"
            got[kind] = tmp_path / f"got.{kind}.dcm"
            got[kind].write_bytes(answer.content)
        assert not any((tmp_path / "work" / "uploads").iterdir())
    assert result["seg_url"] == f"/v1/results/{result['id']}/seg.dcm"
    assert [(r["seg_url"], r["sc_url"]) for r in others] == [(None, None)] * 2
    assert "bare.dcm" in caplog.text and "StudyInstanceUID" in caplog.text
    np.testing.assert_array_equal(seg_mask(got["seg"]), seg_mask(expected_seg))
    sc = pydicom.dcmread(got["sc"])
    np.testing.assert_array_equal(sc.pixel_array, pydicom.dcmread(expected_sc).pixel_array)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID


def test_concurrent_requests_are_scored_in_fewer_model_calls(loaded, tmp_path):
    """While the model scores one request, the others wait in the queue and go in one batch."""
    with serving(loaded, tmp_path / "work", max_batch=16) as (client, service):
        held, gate, sizes = hold(service)
        answers: list = []
        threads = [threading.Thread(target=lambda k=k: answers.append(client.post(
            "/v1/score", files=files((f"{k}.png", LESIONS[k % 4]))))) for k in range(6)]
        for t in threads:
            t.start()
        assert held.wait(10)
        deadline = time.monotonic() + 10
        while sizes[0] + len(service.queue) < 6 and time.monotonic() < deadline:  # the rest wait in the queue
            time.sleep(0.01)
        assert client.get("/health").json()["queue"] == 6 - sizes[0] > 0
        gate.set()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [200] * 6
        assert sizes == [sizes[0], 6 - sizes[0]] and service.batches == 2  # 6 requests, 2 model calls
        assert client.get("/health").json() == {"status": "ok", "queue": 0, "scored": 6}


def test_a_full_queue_answers_503_with_retry_after(loaded, tmp_path):
    with serving(loaded, tmp_path / "work", queue_size=2) as (client, service):
        held, gate, _ = hold(service)
        answers: list = []

        def send(n: int) -> None:
            answers.append(client.post("/v1/score", files=files(*[("x.png", LESIONS[0])] * n)))

        threads = [threading.Thread(target=send, args=(1,))]
        threads[0].start()
        assert held.wait(10)  # the model holds the first request
        threads.append(threading.Thread(target=send, args=(2,)))  # fills the queue of 2
        threads[1].start()
        deadline = time.monotonic() + 10
        while len(service.queue) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = client.post("/v1/score", files=files(("y.png", LESIONS[1])))
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert "queue is full" in full.json()["detail"]
        too_many = client.post("/v1/score", files=files(*[("z.png", LESIONS[1])] * 3))
        assert too_many.status_code == 413 and "--queue-size" in too_many.json()["detail"]
        gate.set()
        for t in threads:
            t.join()
        assert sorted(a.status_code for a in answers) == [200, 200]
        assert client.post("/v1/score", files=files(("y.png", LESIONS[1]))).status_code == 200


def test_an_upload_over_the_limit_gets_413(loaded, tmp_path):
    noise = png((np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))  # ~40 KB
    with serving(loaded, tmp_path / "work", max_upload_mb=0.02) as (client, service):
        declared = client.post("/v1/score", files=files(("big.png", noise)))
        assert declared.status_code == 413 and "limit of 0.02 MB" in declared.json()["detail"]
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
        chunked = client.post("/v1/score", content=iter([head, noise, b"\r\n--b--\r\n"]),  # no Content-Length
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert chunked.status_code == 413 and "limit of 0.02 MB" in chunked.json()["detail"]
        assert not list(service.folder.root.glob("uploads/*"))
        assert client.post("/v1/score", files=files(("ok.png", LESIONS[0]))).status_code == 200


def test_a_body_without_content_length_is_refused_as_soon_as_it_passes_the_limit(tmp_path):
    """The body is counted as it streams in and no more of it is read (nor kept) past the limit."""
    import asyncio

    from starlette.requests import Request

    chunks = [b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n',
              *[b"\0" * 1000] * 1000]
    read = []

    async def receive() -> dict:
        read.append(chunks[len(read)])
        return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(chunks)}

    request = Request({"type": "http", "method": "POST", "path": "/v1/score", "query_string": b"",
                       "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}, receive)
    with ServiceFolder(tmp_path / "work") as folder:
        with pytest.raises(service_module.ServiceError, match="larger than the limit") as refused:
            asyncio.run(service_module.receive_uploads(request, folder, limit=20_000, max_files=4))
        assert refused.value.status == 413 and len(read) == 21  # 20 KB and one chunk more, of 1 MB
        assert not list(folder.root.glob("uploads/*"))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """An exported image-level model (Mahalanobis: no maps)."""
    folder = _fit(tmp_path_factory.mktemp("mahalanobis-run"), "mahalanobis", {})
    return export_onnx(folder, folder / "model.onnx").path


@pytest.mark.parametrize("model_kind", ["padim run", "onnx without maps"])
def test_bad_uploads_get_422_naming_the_file_and_the_server_goes_on(loaded, onnx_file, tmp_path, model_kind):
    model = loaded if model_kind == "padim run" else load_model(onnx_file)
    good = LESIONS[2]
    bad = {
        "empty.png": (b"", "empty file"),
        "truncated.png": (good[: len(good) // 2], "truncated"),
        "notes.png": (b"not an image\n" * 50, "not an image file"),
        "nopixels.dcm": (dicom(None), "no pixel data"),
        "tiny.png": (png(np.zeros((4, 4), np.uint8)), "smaller than 8"),
        "noending": (b"\x00" * 300, "not an image file"),
        "../../../escape.png": (b"GIF89a", "not an image file"),
    }
    with serving(model, tmp_path / "work") as (client, service):
        for name, (data, reason) in bad.items():
            answer = client.post("/v1/score", files=files((name, data)))
            assert answer.status_code == 422, name
            assert answer.json()["detail"].startswith(f"{name}: ") and reason in answer.json()["detail"]
            assert str(service.folder.root) not in answer.json()["detail"]  # the service's own file names stay inside
        mixed = client.post("/v1/score", files=files(("good.png", good), ("empty.png", b"")))
        assert mixed.status_code == 422 and mixed.json()["detail"].startswith("empty.png: ")
        for body, content_type, reason in [
            (b'{"files": []}', "application/json", "multipart/form-data"),
            (b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n",
             "multipart/form-data; boundary=b", "no image"),
            (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc",
             "multipart/form-data; boundary=b", "malformed multipart"),
        ]:
            answer = client.post("/v1/score", content=body, headers={"content-type": content_type})
            assert answer.status_code == 422 and reason in answer.json()["detail"]
        assert client.get("/health").json()["scored"] == 0  # nothing of a refused request was scored
        ok = client.post("/v1/score", files=files(("good.png", good)))
        assert ok.status_code == 200
        result = ok.json()["results"][0]
        if model_kind != "padim run":
            assert result["heatmap_url"] is None and result["mask_url"] is None
            assert client.get(f"/v1/results/{result['id']}/heatmap.png").status_code == 404
            info = client.get("/v1/model").json()
            assert info["detector"] == "mahalanobis" and info["threshold_rule"] == loaded.threshold_rule_
        assert not list(service.folder.root.glob("uploads/*"))


def test_unknown_results_and_pictures_are_404(loaded, tmp_path):
    with serving(loaded, tmp_path / "work") as (client, _):
        result = client.post("/v1/score", files=files(("a.png", LESIONS[0]))).json()["results"][0]
        for url in ["/v1/results/" + "0" * 32 + "/image.png", f"/v1/results/{result['id']}/score.csv",
                    f"/v1/results/{result['id']}/..%2F..%2F.lock", "/v1/results/..%2F.medad-serve/image.png"]:
            answer = client.get(url)
            assert answer.status_code == 404 and answer.json()["detail"], url
        assert client.get(result["image_url"]).status_code == 200


def test_nothing_is_written_outside_the_service_folder(loaded, tmp_path, monkeypatch):
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    big = png((np.random.default_rng(0).random((1200, 1200)) * 255).astype(np.uint8))  # > 1 MB: not spooled
    with serving(loaded, tmp_path / "work") as (client, service):
        for name, data in [("../../../../x.png", big), ("/etc/passwd", LESIONS[0]), ("bad.png", b"x")]:
            client.post("/v1/score", files=files((name, data)))
        ids = [r["id"] for r in client.get("/v1/results").json()["results"]]
    assert len(ids) == 2 and not any(cwd.iterdir()) and not any(temp.iterdir())
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(["work/.medad-serve", *(f"work/results/{i}/{k}" for i in ids for k in
                                                      ("heatmap.png", "image.png", "mask.png"))])


def test_the_workdir_is_empty_or_an_earlier_service_s_and_locked(loaded, tmp_path):
    used = tmp_path / "used"
    with serving(loaded, used) as (client, _):
        client.post("/v1/score", files=files(("a.png", LESIONS[0])))
        with pytest.raises(RunLockedError):
            ServiceFolder(used).__enter__()
    assert len(list(used.glob("results/*/*.png"))) == 3
    with serving(loaded, used) as (client, _):  # a new session: the earlier one's pictures are deleted
        assert not list(used.glob("results/*")) and client.get("/v1/results").json() == {"results": []}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty .*notes.txt.*not used by medad serve"):
        ServiceFolder(mine).__enter__()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_the_command_line(run, tmp_path, monkeypatch):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["serve", "--help"])
    assert help_text.exit_code == 0 and "--max-upload-mb" in help_text.output and "/v1/score" in help_text.output
    missing = runner.invoke(cli, ["serve", "--model", str(tmp_path / "nothing")])
    assert missing.exit_code == 2
    assert missing.output.strip().count("\n") == 0 and "not found" in missing.output
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.update(host=self.config.host,
                                                                          port=self.config.port))
    answer = runner.invoke(cli, ["serve", "--model", str(run), "--host", "0.0.0.0", "--port", "8123",
                                 "--workdir", str(tmp_path / "work")])
    assert answer.exit_code == 0, answer.output
    assert started == {"host": "0.0.0.0", "port": 8123}
    assert "no authentication" in answer.output and "work" in answer.output
    assert not (tmp_path / "work" / ".lock").exists()  # released when the server stops
