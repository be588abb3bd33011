"""Weights by URL (utils/download.py) against a local HTTP server on 127.0.0.1 (a thread in the test): download and
load, cached second call (no request), wrong hash, a server dying mid-transfer (resumed with Range), 404, size limit,
and other schemes refused."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import train as train_script
from tests.synthetic import make_voc, write_weights
from utils.common.errors import ConfigError
from utils.model.config import ModelConfig, build_model
from utils.model.download import DownloadError, fetch
from utils.runtime.loader import load_runnable


class Files(BaseHTTPRequestHandler):
    """Serves `files` {path: bytes}; honours Range; paths in `die_once` send half the body once, then close."""

    files: dict[str, bytes] = {}
    die_once: set[str] = set()
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.die_once:
            self.die_once.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.close()  # the client sees an incomplete body
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CACHE_DIR", str(tmp_path / "cache"))
    Files.files, Files.die_once, Files.requests = {}, set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    config = ModelConfig(classes=["a", "b"], input_shape=[64, 64])
    path = write_weights(tmp_path_factory.mktemp("w") / "w.pth", build_model(config).state_dict(), config)
    return path.read_bytes()


def test_download_then_cached_and_loaded(server, checkpoint_bytes):
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    Files.files["/models/tiny-" + digest[:10] + ".pth"] = checkpoint_bytes
    url = f"{server}/models/tiny-{digest[:10]}.pth"  # torch.hub-style hash prefix: checked
    loaded = load_runnable(url, device="cpu")
    assert loaded.config.classes == ["a", "b"] and len(Files.requests) == 1
    again = fetch(url)
    assert again.read_bytes() == checkpoint_bytes and len(Files.requests) == 1  # no second request
    assert not list(again.parent.glob("*.part"))


def test_wrong_hash_is_refused_and_deleted(server, checkpoint_bytes):
    Files.files["/w.pth"] = checkpoint_bytes
    with pytest.raises(DownloadError, match="does not match"):
        fetch(f"{server}/w.pth", sha256="0" * 64)
    assert fetch(f"{server}/w.pth").is_file()  # without the hash it is fine (nothing half-written was kept)


def test_server_dying_mid_transfer_is_resumed(server):
    body = bytes(range(256)) * 4096
    Files.files["/big.weights"] = body
    Files.die_once.add("/big.weights")
    path = fetch(f"{server}/big.weights", sha256=hashlib.sha256(body).hexdigest())
    assert path.read_bytes() == body
    assert Files.requests[0][1] is None and Files.requests[1][1] == f"bytes={len(body) // 2}-"


def test_404_and_dead_server_are_one_clear_error(server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server}/missing.pth")
    with pytest.raises(DownloadError, match="download failed"):
        fetch("http://127.0.0.1:9/none.pth")  # discard port: connection refused


def test_size_limit_and_schemes(server, monkeypatch):
    Files.files["/huge.pth"] = b"x" * 3_000_000
    monkeypatch.setenv("YOLO_MAX_DOWNLOAD_MB", "1")
    with pytest.raises(DownloadError, match="limit"):
        fetch(f"{server}/huge.pth")
    with pytest.raises(ConfigError, match="only http"):
        fetch("file:///etc/passwd")


def test_train_takes_a_url(server, checkpoint_bytes, tmp_path):
    Files.files["/init.pth"] = checkpoint_bytes
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--weights", f"{server}/init.pth", "--epochs", "1",
                              "--batch-size", "2", "--input-shape", "64", "--workers", "0", "--device", "cpu",
                              "--val-split", "none", "--no-preview", "--save-dir", str(tmp_path / "r")]) == 0
    assert torch.load(tmp_path / "r" / "exp" / "last.pth", weights_only=True)["train_config"]["weights"].startswith(
        "http://127.0.0.1")
