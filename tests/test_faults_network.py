"""Fault suite, network reads: a local HTTP server (a thread in the test) that trickles a weights file a byte at a
time, sends its headers a byte at a time, answers gzip-encoded although it was asked for an unencoded file, or
trickles an MJPEG frame. predict.py (--weights URL, --source URL) must end each with one `error:` line naming the
cause and the setting that bounds it, within the deadline. The test prints its counts as JSON."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from tests.fault_helpers import ROOT, child_env
from tests.synthetic import write_weights
from utils.model.config import ModelConfig, build_model

pytestmark = pytest.mark.slow
TRICKLE_PAUSE = 0.05  # seconds between single bytes: 20 bytes/s, far below any sane minimum rate


class Hostile(BaseHTTPRequestHandler):
    """Routes: /trickle.pth (a byte at a time), /slow-headers.pth (headers a byte at a time), /gzip.pth (a gzip body
    although identity was asked), /mjpeg (multipart headers, then one frame a byte at a time)."""

    checkpoint = b""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        try:
            {"/trickle.pth": self.trickle, "/slow-headers.pth": self.slow_headers, "/gzip.pth": self.gzip,
             "/mjpeg": self.mjpeg}.get(self.path, lambda: self.send_error(404))()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def trickle_bytes(self, data: bytes) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(TRICKLE_PAUSE)

    def trickle(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.checkpoint)))
        self.end_headers()
        self.trickle_bytes(self.checkpoint)

    def slow_headers(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.trickle_bytes(b"X-Padding: " + b"a" * 100_000 + b"\r\n")

    def gzip(self):
        body = gzip.compress(self.checkpoint)
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def mjpeg(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        frame = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(frame))
        self.trickle_bytes(frame)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("network")
    config = ModelConfig(classes=["a", "b"], input_shape=[64, 64])
    weights = write_weights(folder / "w.pth", build_model(config).state_dict(), config)
    Hostile.checkpoint = weights.read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True  # a handler still trickling to a client that left does not hold the shutdown
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    image = folder / "a.jpg"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    yield f"http://127.0.0.1:{httpd.server_address[1]}", weights, image
    httpd.shutdown()
    httpd.server_close()


def predict(*args: object, env: dict[str, str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], cwd=ROOT,
                            env={**child_env(), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace", timeout=timeout)
    return result, time.monotonic() - start


def test_slow_and_encoded_servers_end_with_one_line_within_the_deadline(server, tmp_path):
    url, weights, image = server
    fast = {"YOLO_DOWNLOAD_RATE_WINDOW_S": "1", "YOLO_DOWNLOAD_TIMEOUT_S": "30"}
    # (case, arguments, environment, words of the one error line, seconds it may take beyond starting up)
    cases = [
        ("body a byte at a time", ["--weights", f"{url}/trickle.pth"], fast,
         ["trickle.pth", "below the minimum", "YOLO_DOWNLOAD_MIN_RATE"], 30),
        ("headers a byte at a time", ["--weights", f"{url}/slow-headers.pth"], {"YOLO_DOWNLOAD_TIMEOUT_S": "3"},
         ["slow-headers.pth", "not complete within 3 s", "YOLO_DOWNLOAD_TIMEOUT_S"], 3),
        ("gzip body", ["--weights", f"{url}/gzip.pth"], {}, ["gzip.pth", "gzip-encoded"], 0),
        ("MJPEG frame a byte at a time", ["--weights", weights, "--source", f"{url}/mjpeg", "--stream-timeout", "2"],
         {}, ["/mjpeg", "--stream-timeout"], 10),
    ]
    # seconds a normal run takes on this machine (imports dominate on a busy one): the yardstick of "no hang"
    baseline, start_up = predict("--weights", weights, "--source", image, "--nosave", "--device", "cpu", env={})
    assert baseline.returncode == 0, baseline.stdout[-2000:]
    jobs = [(*args, "--source", image, "--device", "cpu", "--save-dir", tmp_path / name.replace(" ", "_"))
            if "--source" not in args else (*args, "--device", "cpu", "--save-dir", tmp_path / "mjpeg")
            for name, args, *_ in cases]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda pair: predict(*pair[0], env=pair[1]),
                                [(job, case[2]) for job, case in zip(jobs, cases, strict=True)]))
    failures = []
    for (name, _, _, words, bound), (result, seconds) in zip(cases, results, strict=True):
        errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
        if (result.returncode != 1 or len(errors) != 1 or not all(w in errors[0] for w in words)
                or "Traceback" in result.stdout or seconds > 3 * start_up + bound + 30):
            failures.append(f"{name}: exit {result.returncode} after {seconds:.0f} s (a normal run: {start_up:.0f} s)"
                            f"\n{result.stdout[-2000:]}")
    assert not failures, "\n\n".join(failures)
    print("network reads:", json.dumps({"injected": len(cases), "survived": len(cases), "hung": 0,
                                        "seconds": [round(s) for _, s in results]}))
