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

import struct
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.errors import UserError

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


class ImageReadError(UserError, ValueError):
    """An image file that cannot be used; the message names the file, the reason and the fix."""


def _fail(path: Path, reason: str, fix: str) -> ImageReadError:
    return ImageReadError(f"{path}: {reason}; {fix}")


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
    if _looks_like_text(data):
        preview = data[:40].decode("ascii", "replace").strip()
        return _fail(path, f"is a text file, not an image (starts with {preview!r})",
                     "replace it with the real image (an HTML error page saved as .jpg?)")
    return _fail(path, "could not be decoded as an image (corrupt or unsupported format)",
                 "re-export it as JPEG or PNG, or remove it from the dataset")


def read_image(path: str | Path, notes: list[str] | None = None, reduce: int = 1) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) in its stored pixel grid (EXIF orientation ignored).

    Grayscale, RGBA, palette, 16-bit and CMYK inputs are converted to 3-channel uint8; each conversion is described
    by a line appended to `notes` when a list is given. A JPEG cut short (no end-of-image marker) is decoded as far
    as its data goes, the rest grey, and noted as TRUNCATED_JPEG_NOTE. `reduce` in {1, 2, 4, 8} decodes at 1/reduce
    resolution (JPEG decodes this much faster), so the result is about (H / reduce, W / reduce, 3).
    Raises ImageReadError (a ValueError) for missing, empty, text or undecodable files, and for JPEGs cut before
    any image data.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise _fail(path, "image file is missing", "add the image or remove its annotation") from None
    except (IsADirectoryError, PermissionError, OSError) as err:
        raise _fail(path, f"cannot be read ({err.strerror or err})", "check the path and its permissions") from None
    if raw.size == 0:
        raise _fail(path, "is an empty file (0 bytes)", "re-download or re-export the image")
    image = cv2.imdecode(raw, _FLAGS[reduce])
    truncated = image is None and raw[:3].tobytes() == _JPEG_MAGIC and _EOI not in raw[-1024:].tobytes()
    if truncated:
        # What libjpeg's own file reader does at a premature end (cv2.imread's "Premature end of JPEG file"): an
        # end-of-image marker after the data, so what arrived is decoded and the rest left as the decoder fills it
        # (grey). cv2.imdecode gives up on such a buffer. libjpeg may print its own warning line to stderr.
        image = cv2.imdecode(np.concatenate([raw, np.frombuffer(_EOI, np.uint8)]), _FLAGS[reduce])
    if image is None:
        raise _diagnose(path, raw.tobytes())
    if notes is not None:
        if truncated:
            notes.append(TRUNCATED_JPEG_NOTE)
        notes.extend(_conversion_notes(path, raw[:65536].tobytes()))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def truncation_warning(path: str | Path, notes: list[str]) -> str | None:
    """The one warning line for a partly decoded image (a note of `read_image`), or None when it was complete."""
    return f"{path}: {TRUNCATED_JPEG_NOTE}" if TRUNCATED_JPEG_NOTE in notes else None


def probe_image(path: str | Path) -> tuple[int, int, list[str]]:
    """(height, width, conversion notes) of an image file, reading only its header and tail when it is JPEG/PNG.

    Catches missing, empty and text files cheaply (dataset indexing calls this for every image); truncated files and
    other formats are fully decoded (a truncated JPEG that decodes in part is noted, not refused). Raises
    ImageReadError like `read_image`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
            handle.seek(max(0, handle.seek(0, 2) - 1024))
            tail = handle.read()
    except FileNotFoundError:
        raise _fail(path, "image file is missing", "add the image or remove its annotation") from None
    except OSError as err:
        raise _fail(path, f"cannot be read ({err.strerror or err})", "check the path and its permissions") from None
    if not head:
        raise _fail(path, "is an empty file (0 bytes)", "re-download or re-export the image")
    size = _header_size(head)
    truncated = (head.startswith(_JPEG_MAGIC) and _EOI not in tail) or (
        head.startswith(_PNG_MAGIC) and b"IEND" not in tail[-64:])
    if size is None or truncated:
        notes: list[str] = []
        image = read_image(path, notes)  # raises the precise error, or decodes an exotic format
        return image.shape[0], image.shape[1], notes
    return size[0], size[1], _conversion_notes(path, head)


def _header_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(_PNG_MAGIC) and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    frame = _jpeg_frame(head) if head.startswith(_JPEG_MAGIC) else None
    return (int(frame[0]), int(frame[1])) if frame else None


def encoded_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) from the first bytes of an encoded JPEG/PNG (e.g. a stream's part), None when they cannot
    tell; lets a caller bound the pixels before decoding."""
    return _header_size(head)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) read from a JPEG/PNG header without decoding, or None when the header cannot tell."""
    try:
        with open(path, "rb") as handle:
            return _header_size(handle.read(65536))
    except OSError:
        return None


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Save an RGB uint8 image, format by suffix (.jpg when none); imencode + tofile, so non-ASCII paths work on every
    platform (cv2.imwrite fails on them on Windows)."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    data.tofile(str(path))


def to_model_input(images: torch.Tensor | np.ndarray, device: torch.device | None = None,
                   memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 RGB images -> float32 Tensor[B, 3, H, W] in [0, 1] on `device`, laid out as `memory_format`: the one
    conversion of training, evaluation, inference and ONNX input.

    `images` is a Tensor[B, 3, H, W] (a DataLoader batch) or an ndarray[B, H, W, 3] of letterboxed canvases (seen as
    NCHW in channels_last layout, without a copy). Cast and layout change happen in one pass (copy_), then one
    in-place division: as fast as numpy's fused divide for ONNX input, faster than cast-divide-relayout elsewhere.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if device is not None:
        images = images.to(device, non_blocking=True)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
    return out.copy_(images).div_(255)
