"""Benchmark: ``medad serve`` under load, and against bad uploads (issue 30, item 4).

Starts the real server (``python -m medad serve`` on a free port of 127.0.0.1, a fresh
``--workdir``) on ``--model`` or, by default, on a model fitted here in seconds (PaDiM on an
untrained ResNet-18, 64 px grey, on 200 synthetic phantoms: the benchmark is about serving, not
accuracy). Then

* ``--clients`` threads (16) each POST one phantom PNG to ``/v1/score`` after the other, on a
  keep-alive connection (``http.client``), for ``--seconds`` (60): requests/s, p50 / p99 latency,
  errors (any answer but 200, or a failed connection), the server's resident memory (VmRSS) at
  the start of the load, every tenth of it and at its end;
* the bad uploads, one request each: a 0-byte file, a truncated PNG, 100 MB (over the default
  50 MB limit; once with Content-Length, once chunked without it), text named .png and a DICOM
  file without pixel data: the status and message of each;
* one good request and ``/health`` afterwards: the server still serves.

    .venv/bin/python benchmarks/service_load.py                 # about 90 s
    .venv/bin/python benchmarks/service_load.py --model runs/lgg --clients 4 --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

HUNDRED_MB = 100 * 2**20


def fit_model(folder: Path) -> Path:
    """A PaDiM model on 200 synthetic phantoms, saved in ``folder/model``."""
    from medad import AnomalyDetector
    from medad.config import RunConfig
    from medad.data.synthetic import make_phantoms

    cfg = RunConfig.model_validate({
        "data": {"image_size": 64, "channels": 1}, "method": {"name": "none"}, "detector": {"name": "padim"},
        "train": {"epochs": 0, "progress": False},
    })
    AnomalyDetector(cfg).fit(make_phantoms(200, 64, seed=0)[0]).save(folder / "model")
    return folder


def phantom_pngs(n: int) -> list[bytes]:
    """``n`` test phantoms with lesions, as PNG files."""
    from medad.data.synthetic import make_phantoms

    images = make_phantoms(n, 64, seed=1, lesion=True)[0]
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def dicom_without_pixels() -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.Rows, ds.Columns = "NOPIXELS", "OT", 64, 64
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one part ``files`` and its Content-Type."""
    boundary = secrets.token_hex(12)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[int, dict]:
    conn.request("POST", "/v1/score", body, {"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def load(port: int, pngs: list[bytes], clients: int, seconds: float, pid: int
         ) -> tuple[list[float], int, int, list[float]]:
    """Latencies (s) of the successful requests, the number of errors and of requests, and the
    server's RSS (MB) every tenth of ``seconds``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, failed, i = [], 0, k
        while time.perf_counter() < deadline:
            body, content_type = multipart(f"phantom{i % len(pngs)}.png", pngs[i % len(pngs)])
            t0 = time.perf_counter()
            try:
                status, _ = post(conn, body, content_type)
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if status == 200:
                mine.append(time.perf_counter() - t0)
            else:
                failed += 1
            i += clients
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    rss = [rss_mb(pid)]
    while threads[0].is_alive():
        threads[0].join(seconds / 10)
        rss.append(rss_mb(pid))
    for t in threads:
        t.join()
    return latencies, errors[0], len(latencies) + errors[0], rss


def send_large(port: int, chunked: bool) -> tuple[int, str]:
    """POST a 100 MB upload (with Content-Length, or chunked without it) and read the answer, which
    may come before the body is sent: the server refuses it as soon as it knows the size."""
    boundary = secrets.token_hex(12)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/v1/score")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(len(head) + HUNDRED_MB + len(tail)))
    conn.endheaders()
    block = b"\0" * 2**20
    try:
        for piece in [head, *[block] * (HUNDRED_MB // len(block)), tail]:
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: its answer is read next
    try:
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}").get("detail", "")
    except (OSError, http.client.HTTPException) as exc:
        return -1, f"no answer ({type(exc).__name__}: {exc})"
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="run folder or .onnx (default: fit a PaDiM model on phantoms)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medad-serve-bench-") as tmp:
        t0 = time.perf_counter()
        model = args.model or fit_model(Path(tmp) / "run")
        print(f"model {model} ({'given' if args.model else f'fitted in {time.perf_counter() - t0:.1f} s'})")
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "medad", "serve", "--model", str(model), "--port", str(port),
                                   "--workdir", str(Path(tmp) / "work")], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "COLUMNS": "200"})
        try:
            start = time.perf_counter()
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    if server.poll() is not None or time.perf_counter() - start > 120:
                        sys.exit(f"the server did not start:\n{(Path(tmp) / 'server.log').read_text()}")
                    time.sleep(0.2)
            print(f"server up in {time.perf_counter() - start:.1f} s (pid {server.pid}, port {port})")
            pngs = phantom_pngs(32)
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            post(warm, *multipart("warm-up.png", pngs[0]))
            latencies, errors, requests, rss = load(port, pngs, args.clients, args.seconds, server.pid)
            ms = sorted(1000 * x for x in latencies)
            p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan")
            print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {args.clients} clients "
                  f"x {args.seconds:g} s, one 64 px PNG per request")
            print("| requests | requests/s | p50 ms | p99 ms | errors | RSS start MB | RSS end MB |")
            print("|---|---|---|---|---|---|---|")
            print(f"| {requests} | {len(latencies) / args.seconds:.1f} | "
                  f"{statistics.median(ms) if ms else float('nan'):.0f} | {p99:.0f} | {errors} | {rss[0]:.0f} | "
                  f"{rss[-1]:.0f} |")
            print(f"server RSS every {args.seconds / 10:g} s (MB): {' '.join(f'{x:.0f}' for x in rss)}")

            good = pngs[0]
            bad = {
                "0-byte file": multipart("empty.png", b""),
                "truncated PNG": multipart("truncated.png", good[: len(good) // 2]),
                "text named .png": multipart("notes.png", b"these are my notes, not an image\n" * 20),
                "DICOM without pixel data": multipart("nopixels.dcm", dicom_without_pixels()),
            }
            print("\n| bad upload | status | message |")
            print("|---|---|---|")
            for label, (body, content_type) in bad.items():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, answer = post(conn, body, content_type)
                conn.close()
                print(f"| {label} | {status} | {answer.get('detail', '')} |")
            for chunked in (False, True):
                status, detail = send_large(port, chunked)
                print(f"| 100 MB ({'chunked' if chunked else 'Content-Length'}) | {status} | {detail} |")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status, answer = post(conn, *multipart("after.png", good))
            conn.request("GET", "/health")
            health = json.loads(conn.getresponse().read())
            print(f"\nafterwards: POST /v1/score -> {status} (score {answer['results'][0]['score']:.4g}), "
                  f"/health -> {health}, server process {'running' if server.poll() is None else 'ended'}, "
                  f"RSS {rss_mb(server.pid):.0f} MB")
            logged = (Path(tmp) / "server.log").read_text()
            print(f"server log: {logged.count('Traceback')} tracebacks, {logged.count(' 500 ')} answers 500")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


if __name__ == "__main__":
    main()
