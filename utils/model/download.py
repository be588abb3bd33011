"""Weights by URL: `--weights https://.../file.pth` (also .pt, .weights, .conv.29, .onnx) is downloaded once into a
cache folder and then read from there.

- Cache: $YOLO_CACHE_DIR, else $XDG_CACHE_HOME/yolov4-tiny-attention, else ~/.cache/yolov4-tiny-attention; one
  sub-folder per URL (two URLs with the same file name never share a file).
- Only http and https (also after redirects). The size is bounded: a Content-Length above the limit is refused before
  anything is written, and a body that grows past it is cut ($YOLO_MAX_DOWNLOAD_MB, default 2048).
- A broken transfer is resumed with an HTTP Range request (or restarted when the server ignores ranges), a few times;
  the file is written to `<name>.part` and renamed only when complete and verified, so a half download is never used.
- sha256: checked when `--weights-sha256` gives one (full or a prefix of at least 8 hex digits), or when the file name
  carries torch.hub's `name-<sha256 prefix>.ext`. A mismatch deletes the download.
- Time: the whole download (connection, headers, body, retries) has a deadline ($YOLO_DOWNLOAD_TIMEOUT_S, default
  3600), and once data flows a minimum rate ($YOLO_DOWNLOAD_MIN_RATE bytes/s, default 10000, averaged over
  $YOLO_DOWNLOAD_RATE_WINDOW_S, default 30 s): a server trickling bytes is cut off, and retried while time is left.
- Only unencoded bodies: the request says Accept-Encoding: identity, and a gzip- (or other-) encoded answer is refused
  with a clear line (saved as it came, it would read as a corrupt checkpoint).
- A network error is one clear line (DownloadError, a UserError). The file is then loaded as any local weights
  (torch.load(..., weights_only=True) for .pth).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from utils.common.errors import ConfigError, UserError
from utils.common.filenames import safe_stem

LOGGER = logging.getLogger(__name__)
SCHEMES = ("http", "https")
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})(?=\.[^-]*$)")  # torch.hub: resnet18-f37072fd.pth
DEFAULT_MAX_MB = 2048
ATTEMPTS = 4
CHUNK = 1 << 16


class DownloadError(UserError, RuntimeError):
    """A download that failed (network, HTTP status, size, checksum); the message names the URL and the fix."""


def is_url(value: object) -> bool:
    """True for 'scheme://...' strings; only http(s) are downloaded, other schemes are refused by `fetch`."""
    return isinstance(value, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value) is not None


def cache_dir() -> Path:
    if os.environ.get("YOLO_CACHE_DIR"):
        return Path(os.environ["YOLO_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "yolov4-tiny-attention"


def max_bytes() -> int:
    try:
        return int(float(os.environ.get("YOLO_MAX_DOWNLOAD_MB", DEFAULT_MAX_MB)) * 2**20)
    except ValueError:
        raise ConfigError("YOLO_MAX_DOWNLOAD_MB must be a number of megabytes") from None


def local_weights(value: str | Path | None, sha256: str | None = None) -> Path | None:
    """`value` as a local path: URLs are fetched into the cache first; None stays None."""
    if value is None or value == "":
        return None
    return fetch(value, sha256) if is_url(str(value)) else Path(value)


def cached_path(url: str) -> Path:
    """Where `url` is cached: <cache>/<url hash>/<safe file name>."""
    name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    parts = name.split(".", 1)
    safe = safe_stem(parts[0], "weights") + ("." + re.sub(r"[^\w.-]", "_", parts[1]) if len(parts) > 1 else "")
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / safe


def expected_hash(url: str, sha256: str | None) -> str | None:
    if sha256:
        if not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
            raise ConfigError(f"--weights-sha256 {sha256!r}: give the file's sha256 (64 hex digits, or at least 8)")
        return sha256.lower()
    found = HASH_IN_NAME.search(Path(urllib.parse.urlparse(url).path).name)
    return found.group(1) if found else None


def fetch(url: str, sha256: str | None = None) -> Path:
    """The local copy of `url`, downloading it (with resume and retries) unless the cache holds it already."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"--weights {url}: only http:// and https:// URLs are downloaded; give a local path for "
                          "other sources")
    target, wanted = cached_path(url), expected_hash(url, sha256)
    if target.is_file():
        if wanted is None or file_sha256(target).startswith(wanted):
            LOGGER.info("weights %s: cached %s", url, target)
            return target
        LOGGER.warning("cached %s does not match sha256 %s; downloading it again", target, wanted)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    _download(url, part)
    digest = file_sha256(part)
    if wanted is not None and not digest.startswith(wanted):
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest[:16]}... does not match the expected {wanted}; the file is "
                            "corrupt or not the one you meant (download deleted)")
    os.replace(part, target)
    LOGGER.info("weights %s -> %s (sha256 %s)", url, target, digest)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, part: Path) -> None:
    """Fill `part` with the body of `url`: resumed from what `part` holds, retried ATTEMPTS times, all of it within
    the deadline (deadline_seconds)."""
    deadline = time.monotonic() + deadline_seconds()
    last_error = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if _transfer_before(deadline, url, part):
                return
            last_error = "the connection closed before the end of the file"
        except urllib.error.HTTPError as err:
            if err.code == 416:  # the range starts at the end: restart cleanly
                part.unlink(missing_ok=True)
                last_error = "the server refused to resume"
                continue
            if 400 <= err.code < 500:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; check the URL") from None
            last_error = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, HTTPException, TimeoutError, ConnectionError, Stalled) as err:
            last_error = str(getattr(err, "reason", None) or err) or type(err).__name__
        if attempt < ATTEMPTS:
            LOGGER.warning("download of %s interrupted (%s); retrying (%d of %d)", url, last_error, attempt + 1,
                           ATTEMPTS)
            time.sleep(min(0.5 * attempt, 2.0, max(deadline - time.monotonic(), 0)))
    raise DownloadError(f"{url}: download failed after {ATTEMPTS} attempts ({last_error}); check the network and "
                        "the URL (a partial download is kept and resumed next time)")


# Every download is bounded in time: a whole deadline (connection, headers, body and retries together), and a minimum
# rate once data flows (a server trickling a byte a second never trips the socket timeout, which counts silence only).
DEFAULT_DEADLINE_S = 3600.0  # $YOLO_DOWNLOAD_TIMEOUT_S
DEFAULT_MIN_RATE = 10_000  # bytes per second, $YOLO_DOWNLOAD_MIN_RATE
DEFAULT_RATE_WINDOW_S = 30.0  # the rate is averaged over this many seconds, $YOLO_DOWNLOAD_RATE_WINDOW_S


class Stalled(ConnectionError):
    """Data arrives slower than the minimum rate (retried, within the deadline)."""


def deadline_seconds() -> float:
    return _env_number("YOLO_DOWNLOAD_TIMEOUT_S", DEFAULT_DEADLINE_S)


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={text!r}: give a positive number")
    return value


def _transfer_before(deadline: float, url: str, part: Path) -> bool:
    """_transfer on a worker thread, given up (DownloadError) when `deadline` passes: a server that sends its
    headers, or its body, a byte at a time would otherwise hold the command for days. The worker is told to stop and
    writes nothing more; it is a daemon, so a socket stuck in recv does not keep the process alive."""
    outcome: dict = {}
    stop = threading.Event()

    def work() -> None:
        try:
            outcome["done"] = _transfer(url, part, stop=stop)
        except BaseException as err:  # handed to the caller, which re-raises it
            outcome["error"] = err
    worker = threading.Thread(target=work, name="download", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0))
    if worker.is_alive():
        stop.set()
        raise DownloadError(f"{url}: not complete within {deadline_seconds():g} s (YOLO_DOWNLOAD_TIMEOUT_S); the "
                            "server is too slow or stalls: try again later, or download the file yourself and pass "
                            "its path (a partial download is kept and resumed next time)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["done"]


def _transfer(url: str, part: Path, timeout: float = 30.0, stop: threading.Event | None = None) -> bool:
    """One request; appends to `part` (Range) when the server resumes, else rewrites it. True when complete."""
    have = part.stat().st_size if part.is_file() else 0
    # identity: a compressed body would be saved as it came and then read as a corrupt (or "unsafe") checkpoint
    headers = {"User-Agent": "yolov4-tiny-attention", "Accept-Encoding": "identity",
               **({"Range": f"bytes={have}-"} if have else {})}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        if urllib.parse.urlparse(response.geturl()).scheme.lower() not in SCHEMES:
            raise DownloadError(f"{url}: redirected to a non-http(s) address; refused")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DownloadError(f"{url}: the server sent the file {encoding}-encoded although an unencoded one was "
                                "asked for; download it with a tool that decodes it (curl --compressed) and pass "
                                "the file's path")
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        limit = max_bytes()
        if total is not None and total > limit:
            raise DownloadError(f"{url}: {total} bytes is more than the {limit}-byte limit for weights "
                                "(YOLO_MAX_DOWNLOAD_MB raises it)")
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                leave=False) as bar:
            rate = RateCheck(url)
            while block := response.read1(CHUNK):  # read1: at most one recv, so the rate is checked as bytes come
                if stop is not None and stop.is_set():
                    return False
                have += len(block)
                if have > limit:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{url}: more than the {limit}-byte limit for weights; refused")
                out.write(block)
                bar.update(len(block))
                rate.add(len(block))
    return total is None or have >= total


class RateCheck:
    """Raises Stalled when fewer than the minimum rate's bytes arrived over the last window (checked as each block
    arrives; a silent server is the socket timeout's case)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.min_rate = _env_number("YOLO_DOWNLOAD_MIN_RATE", DEFAULT_MIN_RATE)
        self.window = _env_number("YOLO_DOWNLOAD_RATE_WINDOW_S", DEFAULT_RATE_WINDOW_S)
        self.start, self.received = time.monotonic(), 0

    def add(self, count: int) -> None:
        now = time.monotonic()
        self.received += count
        if now - self.start >= self.window:
            rate = self.received / (now - self.start)
            if rate < self.min_rate:
                raise Stalled(f"{rate:.0f} bytes/s over the last {now - self.start:.0f} s, below the minimum "
                              f"{self.min_rate:.0f} (YOLO_DOWNLOAD_MIN_RATE)")
            self.start, self.received = now, 0
