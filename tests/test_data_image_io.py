"""utils.image_io: every odd image file is either converted (with a note) or refused with a message naming it."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from utils.image_io import ImageReadError, image_size, read_image, write_image


def _rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth RGB test image (JPEG keeps smooth images close to the original)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.dstack([xs * 255 // w, ys * 255 // h, np.full((h, w), 90)]).astype(np.uint8)


def _write(path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix if path.suffix in (".png", ".jpg") else ".png", rgb[..., ::-1].copy())
    assert ok
    buf.tofile(str(path))


def test_reads_rgb_in_channel_order(tmp_path):
    rgb = _rgb()
    _write(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_non_ascii_path_with_space(tmp_path):
    path = tmp_path / "ünïcode dir" / "bild 1.jpg"
    path.parent.mkdir()
    _write(path, _rgb())
    assert read_image(path).shape == (48, 64, 3)
    assert image_size(path) == (48, 64)


@pytest.mark.parametrize("kind, note", [
    ("gray16", "converted 16-bit PNG to 8-bit"),
    ("rgba", "converted RGBA PNG to 3-channel RGB"),
    ("gray_jpg", "converted grayscale JPEG to 3-channel RGB"),
    ("png_as_jpg", "PNG data in a .jpg file"),
])
def test_converted_with_note(tmp_path, kind, note):
    rgb = _rgb()
    if kind == "gray16":
        path = tmp_path / "x.png"
        cv2.imwrite(str(path), (rgb[..., 0].astype(np.uint16) * 257))
    elif kind == "rgba":
        path = tmp_path / "x.png"
        cv2.imwrite(str(path), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]))
    elif kind == "gray_jpg":
        path = tmp_path / "x.jpg"
        cv2.imwrite(str(path), rgb[..., 0])
    else:
        path = tmp_path / "x.jpg"
        cv2.imencode(".png", rgb[..., ::-1])[1].tofile(str(path))
    notes: list[str] = []
    image = read_image(path, notes)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert any(note in n for n in notes), notes
    if kind == "gray16":  # 16-bit values scaled down, not clipped
        np.testing.assert_allclose(image[..., 0].astype(int), rgb[..., 0], atol=1)


def test_cmyk_jpeg_converted(tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="PIL is only used to write a CMYK JPEG fixture")
    rgb = _rgb()
    path = tmp_path / "cmyk.jpg"
    pil.fromarray(rgb).convert("CMYK").save(path)
    notes: list[str] = []
    image = read_image(path, notes)
    assert notes == ["converted CMYK JPEG to RGB"]
    assert np.abs(image.astype(int) - rgb).mean() < 8  # colours survive the conversion


@pytest.mark.parametrize("kind, message", [
    ("zero", "empty file (0 bytes)"),
    ("truncated", "JPEG is truncated"),
    ("text", "is a text file, not an image"),
    ("missing", "image file is missing"),
    ("garbage", "could not be decoded"),
])
def test_refused_with_clear_message(tmp_path, kind, message):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = cv2.imencode(".jpg", cv2.resize(_rgb(), (320, 240)))[1].tobytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "text":
        path.write_text("<html><body>404 Not Found</body></html>")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_exif_orientation_ignored(tmp_path):
    """A JPEG tagged 'rotate 90' is returned in its stored (landscape) grid, matching how boxes were drawn."""
    pil = pytest.importorskip("PIL.Image", reason="PIL is only used to write an EXIF-tagged fixture")
    path = tmp_path / "rotated.jpg"
    image = pil.fromarray(_rgb(40, 80))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    path.write_bytes(buf.getvalue())
    assert read_image(path).shape == (40, 80, 3)


def test_reduced_decode(tmp_path):
    _write(tmp_path / "big.jpg", cv2.resize(_rgb(), (400, 300)))
    assert read_image(tmp_path / "big.jpg", reduce=4).shape == (75, 100, 3)


def test_write_image_round_trips_rgb_to_non_ascii_paths(tmp_path):
    rgb = _rgb()
    folder = tmp_path / "数据 集"
    folder.mkdir()
    write_image(folder / "out.png", rgb)
    assert np.array_equal(read_image(folder / "out.png"), rgb)
    write_image(folder / "noext", rgb)  # no suffix: JPEG
    assert (folder / "noext").read_bytes()[:3] == b"\xff\xd8\xff"
