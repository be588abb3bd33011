"""predict.py on streams: an MJPEG stream and a video file served by a local HTTP server, a .txt list read side by
side, --vid-stride, a stalled server and a dead port failing within --stream-timeout with one line, reconnects after a
dropped connection, credentials never printed, other URL schemes refused."""
from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

import predict
from tests.synthetic import write_weights
from tests.test_predict import make_model
from utils.common.filenames import MAX_STEM
from utils.deploy import streams
from utils.deploy.streams import StreamError, mask_url, open_any_source

FRAMES = 7
SIZE = (96, 64)  # width, height of every served frame


def _image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)


def _jpeg(i: int) -> bytes:
    return cv2.imencode(".jpg", _image(i))[1].tobytes()


class Handler(BaseHTTPRequestHandler):
    """/mjpeg: FRAMES parts then a clean close; /mjpeg-nolength: parts without Content-Length; /clip.avi: a video
    file; /stall: accepts and never answers; /drop: 3 parts, then a part cut short, then 503 for every reconnect."""

    video: bytes = b""
    requests: list[str] = []
    authorizations: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.requests.append(self.path)
        Handler.authorizations.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/stall"):
            time.sleep(5)
            return
        if self.path == "/clip.avi":
            self._send(200, "video/x-msvideo", self.video)
        elif self.path.startswith("/mjpeg"):
            self._mjpeg(FRAMES, length="nolength" not in self.path)
        elif self.path.startswith("/slow"):  # a live camera: a frame every 0.1 s
            self._mjpeg(4, length=True, pause=0.1)
        elif self.path == "/huge":  # a part that claims 1 GiB
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/x-mixed-replace; boundary="--cam"')
            self.end_headers()
            self.wfile.write(b"--cam\r\nContent-Type: image/jpeg\r\nContent-Length: 1073741824\r\n\r\n\xff\xd8")
        elif self.path == "/garbage":  # a text part between two frames
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=b")
            self.end_headers()
            for data in (_jpeg(0), b"<html>not an image</html>", _jpeg(1)):
                self.wfile.write(b"--b\r\n\r\n" + data + b"\r\n")
            self.wfile.write(b"--b--\r\n")
        elif self.path == "/freeze":  # 2 frames, then silence on every connection
            self._mjpeg(2, length=True)
            self.wfile.flush()
            time.sleep(5)
        elif self.path == "/drop":
            if Handler.requests.count("/drop") > 1:
                self._send(503, "text/plain", b"gone")
                return
            self._mjpeg(3, length=True, cut=True)
        else:
            self._send(404, "text/plain", b"no")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _mjpeg(self, count: int, length: bool, cut: bool = False, pause: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(count):
            data = _jpeg(i)
            head = f"Content-Length: {len(data)}\r\n" if length else ""
            self.wfile.write(f"--frame\r\nContent-Type: image/jpeg\r\n{head}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            time.sleep(pause)
        if cut:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n\xff\xd8")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG/avi")
    for i in range(FRAMES):
        writer.write(_image(i))
    writer.release()
    Handler.video = path.read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, config = make_model()
    return write_weights(tmp_path_factory.mktemp("weights") / "best.pth", model.state_dict(), config)


def _ffmpeg_network() -> bool:
    info = cv2.getBuildInformation()
    return any("FFMPEG" in line and "YES" in line for line in info.splitlines())


def run(checkpoint, tmp_path, source, *extra) -> tuple[int, Path]:
    save_dir = tmp_path / "run"
    code = predict.main(["--weights", str(checkpoint), "--source", str(source), "--save-dir", str(tmp_path),
                         "--name", "run", "--max-det", "5", "--input-shape", "64", "--stream-timeout", "2", *extra])
    return code, save_dir


def video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.mark.parametrize("route, stride", [("mjpeg", 1), ("mjpeg-nolength", 3)])
def test_mjpeg_stream_with_vid_stride(route, stride, server, checkpoint, tmp_path, capsys):
    code, save_dir = run(checkpoint, tmp_path, f"{server}/{route}", "--vid-stride", str(stride), "--save-txt")
    expected = len(range(0, FRAMES, stride))
    assert code == 0
    stem = f"127_0_0_1_{server.rsplit(':', 1)[1]}_{route}"
    assert video_frames(save_dir / f"{stem}.mp4") == expected
    labels = sorted(p.name for p in (save_dir / "labels").iterdir())
    assert labels == [f"{stem}_{i:06d}.txt" for i in range(0, FRAMES, stride)]
    assert f"{expected} image(s)" in capsys.readouterr().out


@pytest.mark.skipif(not _ffmpeg_network(), reason="OpenCV built without FFMPEG cannot read video over http")
def test_video_file_over_http(server, checkpoint, tmp_path, capsys):
    code, save_dir = run(checkpoint, tmp_path, f"{server}/clip.avi", "--vid-stride", "2")
    assert code == 0
    assert video_frames(next(save_dir.glob("*.mp4"))) == len(range(0, FRAMES, 2))


def test_local_video_vid_stride(checkpoint, tmp_path, server):
    path = tmp_path / "clip.avi"
    path.write_bytes(Handler.video)
    code, save_dir = run(checkpoint, tmp_path, path, "--vid-stride", "4", "--save-txt")
    assert code == 0 and video_frames(save_dir / "clip.mp4") == 2
    assert sorted(p.name for p in (save_dir / "labels").iterdir()) == ["clip_000000.txt", "clip_000004.txt"]


def _lines(capsys) -> list[str]:
    """Our log lines on stderr (tqdm's bar shares it, ending its redraws with carriage returns)."""
    return [line.strip() for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]


def _error_lines(capsys) -> list[str]:
    return [line for line in _lines(capsys) if line.startswith("error:")]


def test_stalled_server_fails_within_timeout(server, checkpoint, tmp_path, capsys):
    start = time.monotonic()
    code, save_dir = run(checkpoint, tmp_path, f"{server}/stall", "--stream-timeout", "1")
    assert code == 1 and time.monotonic() - start < 4
    (line,) = _error_lines(capsys)
    assert "/stall" in line and "--stream-timeout 1" in line
    assert not save_dir.exists()  # nothing arrived: no empty run folder left


def test_watchdog_ends_a_source_whose_backend_ignores_the_timeout(server, checkpoint, tmp_path, capsys,
                                                                   monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(streams, "open_http", lambda url, timeout: release.wait(30))  # blocks past any timeout
    start = time.monotonic()
    try:
        code, _ = run(checkpoint, tmp_path, f"{server}/mjpeg", "--stream-timeout", "1")
    finally:
        release.set()
    assert code == 1 and time.monotonic() - start < 5
    (line,) = _error_lines(capsys)
    assert "no answer for 1 s (--stream-timeout 1)" in line


def test_dead_port_fails_quickly(checkpoint, tmp_path, capsys):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    code, _ = run(checkpoint, tmp_path, f"rtsp://127.0.0.1:{port}/cam", "--stream-timeout", "2")
    assert code == 1 and time.monotonic() - start < 3
    (line,) = _error_lines(capsys)
    assert f"rtsp://127.0.0.1:{port}/cam" in line and "--stream-timeout" in line


def test_dropped_connection_is_retried(server, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(streams, "RECONNECT_PAUSE", 0.05)
    Handler.requests.clear()
    code, save_dir = run(checkpoint, tmp_path, f"{server}/drop")
    assert code == 1 and Handler.requests.count("/drop") == 1 + streams.RECONNECTS
    lines = _lines(capsys)
    assert len([line for line in lines if "reconnecting in" in line]) == streams.RECONNECTS
    (line,) = [line for line in lines if line.startswith("error:")]
    assert "connection lost after 3 frames" in line
    assert video_frames(next(save_dir.glob("*.mp4"))) == 3  # what arrived before the drop is kept


def test_a_source_freezing_on_every_connection_ends(server, checkpoint, tmp_path, capsys, monkeypatch):
    """Frames then silence, again after each reconnect: the count does not restart (the connection was not healthy
    for HEALTHY_SECONDS), so it ends after RECONNECTS attempts instead of looping."""
    monkeypatch.setattr(streams, "RECONNECT_PAUSE", 0.05)
    start = time.monotonic()
    code, save_dir = run(checkpoint, tmp_path, f"{server}/freeze", "--stream-timeout", "1")
    assert code == 1 and time.monotonic() - start < 15
    lines = _lines(capsys)
    assert len([line for line in lines if "reconnecting in" in line]) == streams.RECONNECTS
    (line,) = [line for line in lines if line.startswith("error:")]
    assert f"connection lost after {2 * (1 + streams.RECONNECTS)} frames" in line


def test_source_list_side_by_side(server, checkpoint, tmp_path, capsys):
    (tmp_path / "clip.avi").write_bytes(Handler.video)
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# two cameras and a file\n{server}/mjpeg\n\n{server}/mjpeg?cam=2\nclip.avi\n",
                       encoding="utf-8")
    code, save_dir = run(checkpoint, tmp_path, listing, "--vid-stride", "2", "--save-txt")
    assert code == 0
    videos = sorted(save_dir.glob("*.mp4"))
    assert len(videos) == 3 and all(video_frames(v) == len(range(0, FRAMES, 2)) for v in videos)
    assert len(list((save_dir / "labels").iterdir())) == 3 * len(range(0, FRAMES, 2))  # no name shared


def test_source_list_goes_on_past_a_failed_source(server, checkpoint, tmp_path, capsys):
    listing = tmp_path / "sources.txt"
    listing.write_text(f"{server}/mjpeg\n{server}/stall\n", encoding="utf-8")
    code, save_dir = run(checkpoint, tmp_path, listing, "--stream-timeout", "1")
    assert code == 1
    assert video_frames(next(save_dir.glob("*.mp4"))) == FRAMES
    errors = _error_lines(capsys)
    assert len(errors) == 2 and "/stall" in errors[0] and "1 of 2 sources failed" in errors[1]


def test_credentials_are_masked(server, checkpoint, tmp_path, capsys):
    port = server.rsplit(":", 1)[1]
    code, save_dir = run(checkpoint, tmp_path, f"http://admin:s3cret@127.0.0.1:{port}/stall?token=abc123",
                         "--stream-timeout", "1")
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1 and "s3cret" not in text and "abc123" not in text and "admin:***@" in text
    names = " ".join(p.name for p in tmp_path.rglob("*"))
    assert "s3cret" not in names and "admin" not in names


def test_credentials_of_a_working_stream(server, checkpoint, tmp_path, capsys):
    port = server.rsplit(":", 1)[1]
    Handler.authorizations.clear()
    code, save_dir = run(checkpoint, tmp_path, f"http://admin:s3cret@127.0.0.1:{port}/mjpeg", "--vid-stride", "4")
    assert code == 0 and Handler.authorizations == ["Basic YWRtaW46czNjcmV0"]  # sent as HTTP Basic auth
    assert [p.name for p in save_dir.iterdir()] == [f"127_0_0_1_{port}_mjpeg.mp4"]
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err


def test_mask_url_and_schemes(tmp_path):
    assert mask_url("rtsp://user:p@ss@cam:554/live?key=k&ch=1") == "rtsp://user:***@cam:554/live?key=***&ch=1"
    assert mask_url("rtsp://token@cam/live") == "rtsp://***@cam/live"
    for url in ["file:///etc/passwd", "ftp://host/x.mp4", "gopher://h/"]:
        with pytest.raises(predict.SourceError, match="not a stream"):
            open_any_source(url)
    listing = tmp_path / "l.txt"
    listing.write_text("rtsp://a/x\nfile:///etc/passwd\n")
    with pytest.raises(predict.SourceError, match=r"l.txt:2"):
        open_any_source(listing)


def test_output_names_are_safe_and_unique(tmp_path):
    long_path = "/" + "a/../" * 60
    listing = tmp_path / "l.txt"
    listing.write_text(f"rtsp://cam{long_path}\nrtsp://cam{long_path}\nrtsp://u:pw@cam/../../x\n")
    stems = [s.stem for s in open_any_source(listing).sources]
    assert len(set(stems)) == 3
    assert all("/" not in s and ".." not in s and "pw" not in s and len(s) <= MAX_STEM + 4 for s in stems)


def test_single_failure_raises_one_stream_error():
    source = open_any_source("rtsp://127.0.0.1:1/x", timeout=1)
    assert list(source) == []
    with pytest.raises(StreamError, match="127.0.0.1:1/x"):
        source.raise_failures()


def test_list_of_images_is_read_as_images(tmp_path):
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(tmp_path / name), _image(0))
    listing = tmp_path / "images.txt"
    listing.write_text(f"b.png\n{tmp_path / 'a.jpg'}\n")
    source = open_any_source(listing)
    assert source.kind == "images" and [frame.name for frame in source] == ["b.png", "a.jpg"]


def test_list_sources_are_interleaved_as_frames_arrive(server, tmp_path):
    listing = tmp_path / "cams.txt"
    listing.write_text(f"{server}/slow?cam=1\n{server}/slow?cam=2\n")
    source = open_any_source(listing, timeout=2)
    order = [frame.source for frame in source]
    assert {stem: order.count(stem) for stem in order} == {s.stem: 4 for s in source.sources}
    assert len(set(order[:4])) == 2, order  # both cameras before either finished: side by side, not one by one
    assert not source.failures


@pytest.mark.parametrize("url", ["rtsp://u:pw@host:99999/x", "http://[::1/x", "rtsp://", "http://u:pw@h:abc/"])
def test_malformed_urls_are_one_clear_error(url):
    with pytest.raises(predict.SourceError, match="not a valid URL|names no host") as info:
        open_any_source(url)
    assert ":pw@" not in str(info.value)


def test_hostile_mjpeg_parts(server, checkpoint, tmp_path, capsys):
    code, _ = run(checkpoint, tmp_path, f"{server}/huge")
    assert code == 1
    (line,) = _error_lines(capsys)
    assert "/huge" in line and "1073741824 bytes" in line
    code, save_dir = run(checkpoint, tmp_path / "g", f"{server}/garbage")
    assert code == 0 and video_frames(next(save_dir.glob("*.mp4"))) == 2
    assert any("not a decodable image" in line for line in _lines(capsys))
