"""Live and listed sources for predict.py: stream URLs (rtsp, rtsps, rtmp, http, https: a video file or an MJPEG
stream) and a .txt list of sources (streams, video files, webcam indices), read side by side.

Every source is read on its own thread into one shared queue, so frames come out interleaved as they arrive and a
slow camera does not hold the others back. A source that cannot be opened, or stays silent for `timeout` seconds (a
watchdog, for backends that ignore OpenCV's timeouts), fails with one line naming it and the --stream-timeout flag;
a connection dropped after frames arrived is reopened up to RECONNECTS times, each attempt said in one warning line.

URLs can carry credentials (rtsp://user:pass@host): `mask_url` hides them in every message and output name.
`multipart/x-mixed-replace` (MJPEG) over http(s) is parsed here (urllib + boundary parsing + cv2.imdecode), so its
clean end is a normal end; other URLs go to OpenCV's FFMPEG backend with its open and read timeouts set.
"""
from __future__ import annotations

import base64
import http.client
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import cv2
import numpy as np

from utils.common.filenames import safe_stem, unique_stems
from utils.common.image_io import IMAGE_SUFFIXES, encoded_size
from utils.deploy.sources import VIDEO_SUFFIXES, Frame, ImageSource, SourceError, VideoSource, open_source

LOGGER = logging.getLogger(__name__)
# FFMPEG's own lines ("[tcp @ 0x..] Connection to tcp://host:port failed", "[http @ ..] Stream ends prematurely")
# would stand beside the one line this module prints per failed source. OpenCV reads the variable once, when FFMPEG
# first starts in the process; set OPENCV_FFMPEG_LOGLEVEL=24 (warnings) yourself to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
DEFAULT_STREAM_TIMEOUT = 10.0
RECONNECTS = 3  # reopen attempts after a dropped connection, with a growing pause between them
RECONNECT_PAUSE = 0.5  # seconds before the first reopen; doubled for each further one
HEALTHY_SECONDS = 60.0  # a connection that delivered frames this long restarts the reconnect count
MAX_STREAM_TIMEOUT = 24 * 3600.0
MAX_LIST_SOURCES = 64  # lines of a .txt list (each is a thread and an open connection)
MAX_LIST_BYTES = 1 << 20
MAX_PART_BYTES = 32 << 20  # one MJPEG part (one JPEG)
MAX_FRAME_PIXELS = 8192 * 8192  # width x height of one streamed frame, checked before decoding
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig|credential", re.IGNORECASE)


class StreamError(SourceError):
    """A stream that could not be opened, stalled, or was lost after its reconnects."""


class StreamDataError(StreamError):
    """A stream that sends what cannot be a frame (an oversized part, no boundary); said with the source's name."""


@dataclass
class StreamFrame(Frame):
    """A Frame that knows which source of a list it came from (`source`: its output stem)."""

    source: str = ""


def url_scheme(text: str) -> str | None:
    """'rtsp' for 'rtsp://...', None when `text` is not a URL (a path, 'C:\\x', a webcam index)."""
    match = _SCHEME.match(text.strip())
    return match.group(1).lower() if match else None


def mask_url(url: str) -> str:
    """`url` with its password (or a lone user token) and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: mask everything between // and the last @
        return re.sub(r"^([^:/]*://)[^/]*@", r"\1***@", url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, f"{userinfo}{at}{host}", parts.path, query, ""))


def check_stream_url(url: str) -> str:
    """`url` when its scheme is a stream scheme; SourceError (URL masked) otherwise."""
    scheme = url_scheme(url)
    if scheme not in STREAM_SCHEMES:
        raise SourceError(f"source {mask_url(url)}: the {scheme}:// scheme is not a stream; streams are "
                          f"{', '.join(s + '://' for s in STREAM_SCHEMES)} (a local file is given by its path)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as err:
        raise SourceError(f"source {mask_url(url)} is not a valid URL ({err}); write it as "
                          f"{scheme}://host[:port]/path") from None
    if not parts.hostname:
        raise SourceError(f"source {mask_url(url)} names no host; write it as {scheme}://host[:port]/path")
    return url


def url_stem(url: str) -> str:
    """An output file stem from a URL's host, port and path (never its credentials nor its query)."""
    parts = urlsplit(url)
    port = f"_{parts.port}" if parts.port else ""
    return safe_stem(f"{parts.hostname or 'stream'}{port}{parts.path}", fallback="stream")


class LiveSource:
    """One entry of a stream set: a URL, a video file or a webcam index, read by its own thread."""

    def __init__(self, target: str | int, timeout: float, stride: int = 1):
        self.target, self.timeout, self.stride = target, timeout, stride
        self.is_url = isinstance(target, str) and url_scheme(target) is not None
        self.display = mask_url(target) if self.is_url else (f"webcam {target}" if isinstance(target, int)
                                                               else str(target))
        self.stem = (url_stem(target) if self.is_url else f"webcam{target}" if isinstance(target, int)
                     else safe_stem(Path(target).stem, fallback="video"))
        self.fps: float | None = None
        self.frames = 0  # frames read (kept and skipped), the index of the next one
        self.busy_since: float | None = None  # when the current blocking open/read began (for the watchdog)

    def scrub(self, text: str) -> str:
        """An error text with this source's credentials removed (libraries may echo the URL they were given)."""
        if self.is_url:
            userinfo = urlsplit(self.target).netloc.rpartition("@")[0]
            masked = urlsplit(self.display).netloc.rpartition("@")[0]
            text = text.replace(self.target, self.display)
            if userinfo:
                text = text.replace(userinfo + "@", masked + "@")
            password = urlsplit(self.target).password
            if password and len(password) >= 4:  # a shorter one would mangle ordinary words
                text = text.replace(password, "***")
        return text

    def images(self, stop: threading.Event) -> Iterator[np.ndarray]:
        """RGB frames, reconnecting after a drop; raises StreamError when the source is unusable or lost.

        The reconnect count restarts only after a connection delivered frames for HEALTHY_SECONDS, so a server that
        sends a few frames and then drops every connection ends after RECONNECTS attempts instead of looping."""
        reconnects = 0
        while not stop.is_set():
            before, started = self.frames, time.monotonic()
            try:
                yield from self._connection()
                return
            except StreamDataError as err:
                raise StreamError(f"{self.display}: {err}") from None
            except (OSError, http.client.HTTPException, StreamDropped) as err:
                reason = self.scrub(_reason(err))
            if self.frames == 0:
                raise StreamError(f"{self.display}: cannot be opened or sends no frame ({reason}); check the "
                                  f"address and that the source is up (--stream-timeout {self.timeout:g} s)")
            healthy = self.frames > before and time.monotonic() - started >= HEALTHY_SECONDS
            reconnects = 1 if healthy else reconnects + 1
            if reconnects > RECONNECTS:
                raise StreamError(f"{self.display}: connection lost after {self.frames} frames and {RECONNECTS} "
                                  f"failed reconnects ({reason}; --stream-timeout {self.timeout:g})")
            pause = RECONNECT_PAUSE * 2 ** (reconnects - 1)
            LOGGER.warning("%s: connection lost (%s); reconnecting in %.1f s (attempt %d of %d)", self.display,
                           reason, pause, reconnects, RECONNECTS)
            stop.wait(pause)

    def _connection(self) -> Iterator[np.ndarray]:
        if self.is_url and url_scheme(self.target) in ("http", "https"):
            response = self._blocking(open_http, self.target, self.timeout)
            boundary = mjpeg_boundary(response.headers.get("Content-Type", ""))
            if boundary is not None:
                with response:
                    yield from self._timed(mjpeg_images(PushbackReader(response), boundary))
                return
            response.close()  # not MJPEG: a video file or stream for FFMPEG
        yield from self._timed(self._capture_images())

    def _blocking(self, fn, *args):
        self.busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.busy_since = None

    def _timed(self, images: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """`images` with each blocking read marked for the watchdog."""
        while True:
            self.busy_since = time.monotonic()
            try:
                image = next(images, None)
            finally:
                self.busy_since = None
            if image is None:
                return
            yield image

    def _capture_images(self) -> Iterator[np.ndarray]:
        capture = open_capture(self.target, self.timeout)
        try:
            if not capture.isOpened():
                raise ConnectionError("OpenCV could not open it")
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = fps if fps and 0 < fps < 1000 else self.fps
            finite = capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0
            received = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    if received and (finite or not self.is_url):  # the end of a video file or webcam
                        return
                    raise StreamDropped("no frame within the read timeout or the stream ended")
                received += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


class StreamDropped(Exception):
    """A stream stopped sending (read failed or timed out); the source decides whether to reconnect."""


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(getattr(err, "strerror", None) or err) or type(err).__name__


class _QuietOpenCV:
    """OpenCV's log level at ERROR while any reader thread opens a URL (its 'backend ... can't be used to capture by
    name' warning would stand beside our own line), restored when the last one is done."""

    def __init__(self):
        self._lock, self._users, self._saved = threading.Lock(), 0, None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = cv2.utils.logging.getLogLevel()
                cv2.utils.logging.setLogLevel(min(self._saved, cv2.utils.logging.LOG_LEVEL_ERROR))
            self._users += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                cv2.utils.logging.setLogLevel(self._saved)


_QUIET_OPENCV = _QuietOpenCV()


def open_capture(target: str | int, timeout: float) -> cv2.VideoCapture:
    """cv2.VideoCapture with FFMPEG's open and read timeouts for URLs (the watchdog covers backends ignoring them)."""
    if isinstance(target, str) and url_scheme(target):
        ms = int(timeout * 1000)
        with _QUIET_OPENCV:
            return cv2.VideoCapture(target, cv2.CAP_FFMPEG,
                                    [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return cv2.VideoCapture(target)


def open_http(url: str, timeout: float):
    """urlopen with the URL's credentials sent as HTTP Basic auth (urllib refuses them inside the URL)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urlunsplit((parts.scheme, host, parts.path, parts.query, "")))
    if parts.username is not None:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked: http or https)


def mjpeg_boundary(content_type: str) -> bytes | None:
    """The part boundary of a multipart/x-mixed-replace response, None for any other content type."""
    if not content_type.lower().startswith("multipart/x-mixed-replace"):
        return None
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    boundary = match.group(1).strip().lstrip("-") if match else ""
    return boundary.encode() if boundary else None


class PushbackReader:
    """A response's read/readline with one line that can be put back (the boundary ending a part)."""

    def __init__(self, response):
        self.response, self.pending = response, b""

    def push(self, line: bytes) -> None:
        self.pending = line

    def readline(self, limit: int) -> bytes:
        line, self.pending = self.pending, b""
        return line or self.response.readline(limit)

    def read(self, size: int) -> bytes:
        return self.response.read(size)


def mjpeg_images(response: PushbackReader, boundary: bytes) -> Iterator[np.ndarray]:
    """RGB frames of an MJPEG response. The closing boundary or the connection closed between parts is the end;
    a part cut short raises StreamDropped. Parts over MAX_PART_BYTES or MAX_FRAME_PIXELS raise StreamDataError."""
    marker = b"--" + boundary
    while True:
        line = _next_boundary(response, marker)
        if line is None or line.rstrip().endswith(b"--"):
            return
        headers = _part_headers(response)
        length = headers.get("content-length")
        data = _read_part(response, marker, int(length) if length and length.isdigit() else None)
        image = decode_part(data)
        if image is not None:
            yield image


def _is_boundary(line: bytes, marker: bytes) -> bool:
    """A delimiter line: '--' + boundary as RFC 2046 says; cameras that declare 'boundary=--x' and send '--x' (or
    '----x') are read too, so the dashes before the boundary's name are not counted."""
    return line.startswith(b"--") and line.lstrip(b"-").startswith(marker.lstrip(b"-"))


def _next_boundary(response: PushbackReader, marker: bytes) -> bytes | None:
    skipped = 0
    while True:
        line = response.readline(65536)
        if not line:
            return None
        if _is_boundary(line, marker):
            return line
        skipped += len(line)
        if skipped > MAX_PART_BYTES:
            raise StreamDataError(f"MJPEG stream: no part boundary {marker.decode(errors='replace')!r} within "
                              f"{MAX_PART_BYTES >> 20} MiB; is it really multipart/x-mixed-replace?")


def _part_headers(response: PushbackReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(64):
        line = response.readline(8192)
        if not line:
            raise StreamDropped("connection closed inside a part's headers")
        if not line.strip():
            return headers
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    raise StreamDataError("MJPEG stream: a part has more than 64 header lines")


def _read_part(response: PushbackReader, marker: bytes, length: int | None) -> bytes:
    if length is not None:
        if length > MAX_PART_BYTES:
            raise StreamDataError(f"MJPEG stream: a part of {length} bytes (over {MAX_PART_BYTES >> 20} MiB)")
        data = response.read(length)
        if len(data) < length:
            raise StreamDropped(f"connection closed inside a frame ({len(data)} of {length} bytes)")
        return data
    chunks, size = [], 0  # no Content-Length: the part runs to the next boundary line, or to the end
    while True:
        line = response.readline(65536)
        if not line:  # the server closed after this part: the last frame (a cut one fails to decode, said there)
            return b"".join(chunks).removesuffix(b"\r\n")
        if _is_boundary(line, marker):
            response.push(line)
            return b"".join(chunks).removesuffix(b"\r\n")
        size += len(line)
        if size > MAX_PART_BYTES:
            raise StreamDataError(f"MJPEG stream: a part over {MAX_PART_BYTES >> 20} MiB")
        chunks.append(line)


def decode_part(data: bytes) -> np.ndarray | None:
    """One MJPEG part -> RGB uint8, or None (with a warning) when it is not a decodable image."""
    size = encoded_size(data[:65536])
    if size is not None and size[0] * size[1] > MAX_FRAME_PIXELS:
        raise StreamDataError(f"MJPEG stream: a frame of {size[1]}x{size[0]} pixels (over {MAX_FRAME_PIXELS} pixels)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        LOGGER.warning("MJPEG stream: skipped a part of %d bytes that is not a decodable image", len(data))
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class StreamSet:
    """Frames of several live sources, interleaved as they arrive (one reader thread each), every `stride`-th
    frame of each kept. Failures are collected in `failures` (one line each); the others go on."""

    kind = "stream"
    length = None
    _FRAME, _END, _FAIL, _BUG = range(4)

    def __init__(self, sources: list[LiveSource], timeout: float):
        self.sources, self.timeout = sources, timeout
        for source, stem in zip(sources, unique_stems([s.stem for s in sources], fallback="stream"), strict=True):
            source.stem = stem
        self.failures: list[str] = []
        self.fps = None  # per source: `fps_of(stem)`, known once its first frame arrived

    def fps_of(self, stem: str) -> float | None:
        source = next((s for s in self.sources if s.stem == stem), None)
        return source.fps / source.stride if source is not None and source.fps else None

    def __iter__(self) -> Iterator[StreamFrame]:
        frames: queue.Queue = queue.Queue(maxsize=4 * len(self.sources))
        stop = threading.Event()
        for number, source in enumerate(self.sources):
            threading.Thread(target=self._read, args=(number, source, frames, stop), daemon=True,
                             name=f"stream-{number}").start()
        active = set(range(len(self.sources)))
        try:
            while active:
                try:
                    kind, number, payload = frames.get(timeout=0.1)
                except queue.Empty:
                    self._check_stalls(active)
                    continue
                if number not in active:
                    continue  # a source already declared stalled by the watchdog
                if kind == self._FRAME:
                    yield payload
                elif kind == self._BUG:
                    raise payload  # not the stream's fault: keeps its traceback
                else:
                    active.discard(number)
                    if kind == self._FAIL:
                        self._fail(payload)
                self._check_stalls(active)
        finally:
            stop.set()  # readers stuck in a blocking call are daemons: they end with the process

    def _read(self, number: int, source: LiveSource, frames: queue.Queue, stop: threading.Event) -> None:
        def put(message: tuple) -> bool:
            while not stop.is_set():
                try:
                    frames.put(message, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for image in source.images(stop):
                index, source.frames = source.frames, source.frames + 1
                if index % source.stride == 0:
                    frame = StreamFrame(f"{source.stem}_{index:06d}", image, index, source=source.stem)
                    if not put((self._FRAME, number, frame)):
                        return
        except (StreamError, OSError) as err:
            put((self._FAIL, number, source.scrub(str(err))))
            return
        except Exception as err:  # a bug: handed to the consuming thread, which re-raises it
            put((self._BUG, number, err))
            return
        put((self._END, number, None))

    def _check_stalls(self, active: set[int]) -> None:
        """The watchdog: a source blocked in one open or read past the timeout (+1 s grace) has failed."""
        now = time.monotonic()
        for number in sorted(active):
            source = self.sources[number]
            since = source.busy_since
            if since is not None and now - since > self.timeout + 1.0:
                active.discard(number)
                what = "no frame" if source.frames else "no answer"
                self._fail(f"{source.display}: {what} for {self.timeout:g} s (--stream-timeout {self.timeout:g}); "
                           "check that it is up and reachable, or allow it more time with --stream-timeout")

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        if len(self.sources) > 1:
            LOGGER.error("error: %s; the other sources go on", message)

    def raise_failures(self) -> None:
        """After the run: one StreamError line (the failure itself for a single source, else a summary)."""
        if len(self.failures) == 1 and len(self.sources) == 1:
            raise StreamError(self.failures[0])
        if self.failures:
            raise StreamError(f"{len(self.failures)} of {len(self.sources)} sources failed (see the lines above)")


def read_source_list(path: Path) -> list[tuple[int, str]]:
    """(line number, entry) of a .txt list of sources: one per line, blank lines and # comments skipped."""
    if path.stat().st_size > MAX_LIST_BYTES:
        raise SourceError(f"source list {path} is over {MAX_LIST_BYTES >> 20} MiB; it should hold one source a line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    entries = [(number, line) for number, line in enumerate(lines, 1) if line and not line.startswith("#")]
    if not entries:
        raise SourceError(f"source list {path} names no source; write one stream URL, video file or webcam index "
                          "a line")
    if len(entries) > MAX_LIST_SOURCES:
        raise SourceError(f"source list {path} names {len(entries)} sources; at most {MAX_LIST_SOURCES} are read "
                          "side by side, split it into several runs")
    return entries


def _beside(entry: str, list_path: Path) -> Path:
    """A listed path as given, else relative to the list's folder (as data.yaml lists are)."""
    path = Path(entry)
    if not path.exists() and not path.is_absolute() and (list_path.parent / path).exists():
        return list_path.parent / path
    return path


def listed_images(list_path: Path, entries: list[str]) -> list[Path] | None:
    """The paths of a list whose every line is an image file (read in order, as a folder is), else None."""
    paths = [_beside(entry, list_path) for entry in entries if not url_scheme(entry)]
    if len(paths) < len(entries) or not all(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return None
    return paths


def list_entry(entry: str, list_path: Path, line: int, timeout: float, stride: int) -> LiveSource:
    """One line of a source list -> a LiveSource; relative paths are tried as given, then beside the list."""
    where = f"{list_path}:{line}"
    if url_scheme(entry):
        try:
            return LiveSource(check_stream_url(entry), timeout, stride)
        except SourceError as err:
            raise SourceError(f"{where}: {err}") from None
    if entry.isdigit():
        return LiveSource(int(entry), timeout, stride)
    path = _beside(entry, list_path)
    if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
        raise SourceError(f"{where}: {entry!r} is not a stream URL, a video file ({' '.join(VIDEO_SUFFIXES)}) nor "
                          "a webcam index; a list holds sources read side by side, or only image files")
    return LiveSource(str(path), timeout, stride)


def open_any_source(spec: str | Path, stride: int = 1, timeout: float = DEFAULT_STREAM_TIMEOUT
                    ) -> ImageSource | VideoSource | StreamSet:
    """--source -> frames: a stream URL or a .txt list of sources (a StreamSet), else what `open_source` accepts;
    videos, webcams and streams keep every `stride`-th frame."""
    if stride < 1:
        raise SourceError(f"--vid-stride {stride}: give 1 (every frame) or more (every Nth frame)")
    if not 0 < timeout <= MAX_STREAM_TIMEOUT:  # also refuses nan
        raise SourceError(f"--stream-timeout {timeout}: give a number of seconds above 0 and at most "
                          f"{MAX_STREAM_TIMEOUT:g} (default {DEFAULT_STREAM_TIMEOUT:g})")
    text = str(spec)
    if url_scheme(text):
        return StreamSet([LiveSource(check_stream_url(text), timeout, stride)], timeout)
    path = Path(text)
    if path.suffix.lower() == ".txt" and path.is_file():
        entries = read_source_list(path)
        images = listed_images(path, [entry for _, entry in entries])
        if images is not None:
            return ImageSource(images)
        return StreamSet([list_entry(entry, path, n, timeout, stride) for n, entry in entries], timeout)
    source = open_source(spec)
    return source.every(stride) if isinstance(source, VideoSource) and stride > 1 else source
