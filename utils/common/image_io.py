"""Images in and out: reading files as RGB uint8 (H, W, 3) (or a clear `ImageReadError` naming the file and the fix),
writing them (`write_image`), and turning uint8 batches into model input (`to_model_input`).

EXIF orientation is deliberately IGNORED: images are returned in their stored pixel grid, because VOC/COCO boxes are
annotated in that grid (labelImg, CVAT and the COCO tools all draw on the stored pixels). Rotating by the EXIF tag would
make every box of a phone photo point at the wrong place. If your annotation tool did apply the EXIF rotation, rotate
the image files themselves first (e.g. `exiftran -ai *.jpg`).

Bytes are read with `np.fromfile` and decoded with `cv2.imdecode`, so paths with spaces or non-ASCII characters work
on every platform (cv2.imread fails on non-ASCII paths on Windows).
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from utils.common.atomic import write_bytes_atomic
from utils.common.errors import ConfigError, UserError
from utils.common.paths import is_regular_file

if TYPE_CHECKING:
    import torch

# IMREAD_COLOR always yields 3-channel uint8 BGR: grey is replicated, alpha dropped, 16-bit scaled (>> 8) and CMYK
# converted by libjpeg. IGNORE_ORIENTATION keeps the stored pixel grid (see module docstring).
_FLAGS = {
    1: cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}
# What counts as an image file in dataset image folders and in predict.py's folder and glob sources.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".jfif")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
_EOI = b"\xff\xd9"  # JPEG end-of-image marker
TRUNCATED_JPEG_NOTE = ("JPEG is truncated (no end-of-image marker): used as decoded, the missing part grey; "
                       "re-download or re-export the file")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

# The pixel budget: an image whose header declares more pixels is refused BEFORE decoding (a PNG of a few hundred KB
# can declare 40000x40000 pixels, 4.8 GB once decoded). 2^28 = 268 MP (16384x16384, WebP's own maximum; an 805 MB
# RGB array, decoded in place) holds every camera's photo (150-200 MP medium format included) and large aerial tiles,
# while OpenCV's own limit (2^30 pixels) still lets one file take 3-9 GB. Raise it with --max-pixels (train.py,
# eval.py, predict.py) or the YOLO_MAX_PIXELS environment variable (which data-loading worker processes inherit, also
# when they are spawned rather than forked).
MAX_PIXELS_ENV = "YOLO_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 2 ** 28
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_PNM_HEADER = re.compile(rb"\AP[1-6Ff]\s*(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)")
RECOGNISED_FORMATS = "JPEG, PNG, BMP, TIFF, WebP, GIF, PNM"


class ImageReadError(UserError, ValueError):
    """An image file that cannot be used; the message names the file, the reason and the fix."""


def _fail(path: Path, reason: str, fix: str) -> ImageReadError:
    return ImageReadError(f"{path}: {reason}; {fix}")


def max_pixels() -> int:
    """The pixel budget in force: YOLO_MAX_PIXELS when set (by --max-pixels or the user), else DEFAULT_MAX_PIXELS."""
    try:
        return max(1, int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def set_max_pixels(pixels: int | None) -> None:
    """--max-pixels: set the budget for this process and the data-loading workers it starts (None: unchanged)."""
    if pixels is None:
        return
    if pixels < 1:
        raise ConfigError(f"--max-pixels {pixels}: the pixel budget must be positive (default "
                               f"{DEFAULT_MAX_PIXELS}, about {DEFAULT_MAX_PIXELS / 1e6:.0f} MP)")
    os.environ[MAX_PIXELS_ENV] = str(int(pixels))


class ImageBudgetError(ImageReadError):
    """An image whose header declares more pixels than the budget (or a bad --max-pixels value)."""


def _check_budget(path: Path, size: tuple[int, int]) -> None:
    """Refuse, before decoding, an image whose declared (height, width) exceeds the budget."""
    height, width = size
    budget = max_pixels()
    if height * width > budget:
        raise ImageBudgetError(
            f"{path}: declares {width}x{height} = {height * width / 1e6:.0f} MP, over the pixel budget of "
            f"{budget / 1e6:.0f} MP (refused before decoding: a decompression bomb, or a huge scan); downscale it, "
            f"or raise the budget with --max-pixels {height * width} (or {MAX_PIXELS_ENV}={height * width})")
    if height <= 0 or width <= 0:
        raise _fail(path, f"declares an empty {width}x{height} image", "re-export it")


def _png_header(data: bytes) -> tuple[int, str] | None:
    """(bit depth, colour type name) from a PNG's IHDR chunk, or None when the header is short."""
    if len(data) < 26:
        return None
    return data[24], _PNG_COLOR_TYPES.get(data[25], f"colour type {data[25]}")


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header; components 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF and pos + 10 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width, data[pos + 9]
        pos += 2 + length
    return None


def _conversion_notes(path: Path, data: bytes) -> list[str]:
    """What `read_image` silently fixes for this file, read from the header (no second decode)."""
    notes = []
    suffix = path.suffix.lower()
    if data.startswith(_PNG_MAGIC):
        if suffix not in (".png",):
            notes.append(f"PNG data in a {suffix or 'suffix-less'} file (read as PNG)")
        header = _png_header(data)
        if header is not None:
            depth, colour = header
            if depth == 16:
                notes.append("converted 16-bit PNG to 8-bit")
            if colour != "RGB":
                notes.append(f"converted {colour} PNG to 3-channel RGB")
    elif data.startswith(_JPEG_MAGIC):
        if suffix not in (".jpg", ".jpeg", ".jpe", ".jfif"):
            notes.append(f"JPEG data in a {suffix or 'suffix-less'} file (read as JPEG)")
        frame = _jpeg_frame(data)
        components = frame[2] if frame else None
        if components == 1:
            notes.append("converted grayscale JPEG to 3-channel RGB")
        elif components == 4:
            notes.append("converted CMYK JPEG to RGB")
    return notes


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _diagnose(path: Path, data: bytes) -> ImageReadError:
    """Explain why OpenCV could not decode `data`."""
    if data.startswith(_JPEG_MAGIC) and _EOI not in data[-1024:]:
        return _fail(path, "JPEG is truncated before any image data (no end-of-image marker)",
                     "re-download or re-export the file")
    if data.startswith(_PNG_MAGIC) and b"IEND" not in data[-64:]:
        return _fail(path, "PNG is truncated (no IEND chunk)", "re-download or re-export the file")
    if _looks_like_text(data):  # its content is never quoted: the path could point at anything
        return _fail(path, "is a text file, not an image",
                     "replace it with the real image (an HTML error page saved as .jpg?)")
    if declared_size(data) is None:
        return _fail(path, f"could not be decoded: not an image format this project reads ({RECOGNISED_FORMATS}), "
                     "or its header is cut short", "re-export it as JPEG or PNG, or remove it from the dataset")
    return _fail(path, "could not be decoded as an image (corrupt or unsupported format)",
                 "re-export it as JPEG or PNG, or remove it from the dataset")


def _read_bytes(path: Path) -> np.ndarray:
    """The file's bytes; ImageReadError for a missing, empty or unreadable file, and for anything that is not a
    regular file (a FIFO or device would block or never end; it is never opened)."""
    if not is_regular_file(path):
        if not os.path.lexists(path):
            raise _fail(path, "image file is missing", "add the image or remove its annotation")
        raise _fail(path, "is not a regular file (a folder, FIFO, device or broken link); refused without opening it",
                    "point at the image file itself")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise _fail(path, f"cannot be read ({err.strerror or err})", "check the path and its permissions") from None
    if raw.size == 0:
        raise _fail(path, "is an empty file (0 bytes)", "re-download or re-export the image")
    return raw


def _decode(path: Path, raw: np.ndarray, flags: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(raw, flags)
    except cv2.error as err:  # a decoder assertion (OpenCV's own size limit, a corrupt header): a broken file
        reason = str(err).strip().splitlines()[-1][:200]
        raise _fail(path, f"could not be decoded ({reason})", "re-export it as JPEG or PNG, or remove it") from None


def read_image(path: str | Path, notes: list[str] | None = None, reduce: int = 1) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) in its stored pixel grid (EXIF orientation ignored).

    Grayscale, RGBA, palette, 16-bit and CMYK inputs are converted to 3-channel uint8; each conversion is described
    by a line appended to `notes` when a list is given. A JPEG cut short (no end-of-image marker) is decoded as far
    as its data goes, the rest grey, and noted as TRUNCATED_JPEG_NOTE. `reduce` in {1, 2, 4, 8} decodes at 1/reduce
    resolution (JPEG decodes this much faster), so the result is about (H / reduce, W / reduce, 3).
    Raises ImageReadError (a ValueError) for missing, empty, text, undecodable or non-regular files, for JPEGs cut
    before any image data, and ImageBudgetError, before decoding, for images declaring more than max_pixels().
    """
    path = Path(path)
    raw = _read_bytes(path)
    data = raw.tobytes()
    size = declared_size(data)
    if size is None:
        raise _diagnose(path, data)
    _check_budget(path, size)
    image = _decode(path, raw, _FLAGS[reduce])
    truncated = image is None and data.startswith(_JPEG_MAGIC) and _EOI not in data[-1024:]
    if truncated:
        # What libjpeg's own file reader does at a premature end (cv2.imread's "Premature end of JPEG file"): an
        # end-of-image marker after the data, so what arrived is decoded and the rest left as the decoder fills it
        # (grey). cv2.imdecode gives up on such a buffer. libjpeg may print its own warning line to stderr.
        image = _decode(path, np.concatenate([raw, np.frombuffer(_EOI, np.uint8)]), _FLAGS[reduce])
    if image is None:
        raise _diagnose(path, data)
    if notes is not None:
        if truncated:
            notes.append(TRUNCATED_JPEG_NOTE)
        notes.extend(_conversion_notes(path, data[:65536]))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second full-size array


def truncation_warning(path: str | Path, notes: list[str]) -> str | None:
    """The one warning line for a partly decoded image (a note of `read_image`), or None when it was complete."""
    return f"{path}: {TRUNCATED_JPEG_NOTE}" if TRUNCATED_JPEG_NOTE in notes else None


def probe_image(path: str | Path) -> tuple[int, int, list[str]]:
    """(height, width, conversion notes) of an image file, reading only its header and tail when it is JPEG/PNG.

    Catches missing, empty, text, non-regular and over-budget files cheaply (dataset indexing calls this for every
    image); truncated files and other formats are fully decoded (a truncated JPEG that decodes in part is noted, not
    refused). Raises ImageReadError like `read_image`.
    """
    path = Path(path)
    if not is_regular_file(path):
        _read_bytes(path)  # raises the precise error without opening anything
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
            handle.seek(max(0, handle.seek(0, 2) - 1024))
            tail = handle.read()
    except OSError as err:
        raise _fail(path, f"cannot be read ({err.strerror or err})", "check the path and its permissions") from None
    if not head:
        raise _fail(path, "is an empty file (0 bytes)", "re-download or re-export the image")
    size = declared_size(head)
    if size is not None:
        _check_budget(path, size)
    truncated = (head.startswith(_JPEG_MAGIC) and _EOI not in tail) or (
        head.startswith(_PNG_MAGIC) and b"IEND" not in tail[-64:])
    if size is None or truncated or not head.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
        notes: list[str] = []
        image = read_image(path, notes)  # raises the precise error, or decodes another format (budget-checked)
        return image.shape[0], image.shape[1], notes
    return size[0], size[1], _conversion_notes(path, head)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the first IFD of a classic TIFF (the page OpenCV decodes)."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset:offset + 2])
        found = {}
        for i in range(min(count, 4096)):
            tag, kind, _, value = struct.unpack(order + "HHI4s", data[offset + 2 + 12 * i:offset + 14 + 12 * i])
            if tag in (256, 257):
                found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
    except struct.error:
        return None
    return (found[257], found[256]) if len(found) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) an image file declares in its header, without decoding; None when the format is not one of
    RECOGNISED_FORMATS or the header is cut short. `data`: the file's first bytes (TIFF may need the whole file)."""
    if data.startswith(_PNG_MAGIC):
        return tuple(int(v) for v in struct.unpack(">II", data[16:24]))[::-1] if len(data) >= 24 else None
    if data.startswith(_JPEG_MAGIC):
        frame = _jpeg_frame(data)
        return (int(frame[0]), int(frame[1])) if frame else None
    if data.startswith(b"BM") and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)  # a negative height means top-down rows
    if data.startswith(_TIFF_MAGIC):
        return _tiff_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return height, width
    match = _PNM_HEADER.match(data[:4096])
    return (int(match[2]), int(match[1])) if match else None


def encoded_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) from the first bytes of an encoded JPEG/PNG (e.g. a stream's part), None when they cannot
    tell; lets a caller bound the pixels before decoding."""
    return declared_size(head)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) read from a JPEG/PNG header without decoding, or None when the header cannot tell."""
    if not is_regular_file(path):
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return None
    return declared_size(head) if head.startswith((_JPEG_MAGIC, _PNG_MAGIC)) else None


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Save an RGB uint8 image, format by suffix (.jpg when none); imencode then Python's own file writing, so
    non-ASCII paths work on every platform (cv2.imwrite fails on them on Windows). Written under a temporary name and
    renamed: a run killed mid-write leaves no truncated picture that looks like a result."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    write_bytes_atomic(path, data.tobytes())


def to_model_input(images: torch.Tensor | np.ndarray, device: torch.device | None = None,
                   memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """uint8 RGB images -> float32 Tensor[B, 3, H, W] in [0, 1] on `device`, laid out as `memory_format`: the one
    conversion of training, evaluation, inference and ONNX input.

    `images` is a Tensor[B, 3, H, W] (a DataLoader batch) or an ndarray[B, H, W, 3] of letterboxed canvases (seen as
    NCHW in channels_last layout, without a copy). Cast and layout change happen in one pass (copy_), then one
    in-place division: as fast as numpy's fused divide for ONNX input, faster than cast-divide-relayout elsewhere.
    `memory_format` None is channels_last.
    """
    import torch  # here, not at the top: the commands read this module (--max-pixels) before their work imports torch

    memory_format = torch.channels_last if memory_format is None else memory_format
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if device is not None:
        images = images.to(device, non_blocking=True)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
    return out.copy_(images).div_(255)
