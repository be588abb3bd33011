"""utils.common.image_io: every odd image file is either converted (with a note) or refused with a message naming it."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from utils.common.image_io import ImageReadError, image_size, probe_image, read_image, truncation_warning, write_image


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
    ("truncated", "JPEG is truncated before any image data"),
    ("text", "is a text file, not an image"),
    ("missing", "image file is missing"),
    ("garbage", "could not be decoded"),
])
def test_refused_with_clear_message(tmp_path, kind, message):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":  # cut inside the headers: no image data at all
        data = cv2.imencode(".jpg", cv2.resize(_rgb(), (320, 240)))[1].tobytes()
        path.write_bytes(data[: data.index(b"\xff\xda")])
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


@pytest.mark.parametrize("reduce", [1, 2])
def test_truncated_jpeg_is_used_as_decoded(tmp_path, reduce):
    """A JPEG cut short in its image data (a camera dump cut short): the part that arrived is decoded as libjpeg's
    own file reader decodes it (cv2.imread, "Premature end of JPEG file"), the rest grey, with one note."""
    rgb = cv2.resize(_rgb(), (320, 240))
    data = cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    notes: list[str] = []
    image = read_image(path, notes, reduce=reduce)
    assert image.shape == (240 // reduce, 320 // reduce, 3)
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR if reduce == 1 else cv2.IMREAD_REDUCED_COLOR_2)
    np.testing.assert_array_equal(image, reference[..., ::-1])
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    if reduce == 1:  # the first rows arrived intact, the last ones did not
        assert np.abs(image[:40].astype(int) - full[:40]).max() <= 2
        assert (image[-8:] == 128).all()
    assert len(notes) == 1 and "JPEG is truncated" in notes[0] and "used as decoded" in notes[0]
    warning = truncation_warning(path, notes)
    assert warning is not None and str(path) in warning and "\n" not in warning
    assert truncation_warning(path, []) is None
    height, width, probe_notes = probe_image(path)
    assert (height, width) == (240, 320) and probe_notes == [notes[0]]


def test_complete_jpeg_with_trailing_bytes_is_not_called_truncated(tmp_path):
    """Bytes after the end-of-image marker (some cameras append data) do not make a file truncated."""
    data = cv2.imencode(".jpg", _rgb()[..., ::-1])[1].tobytes() + bytes(2000)
    path = tmp_path / "trailer.jpg"
    path.write_bytes(data)
    notes: list[str] = []
    assert read_image(path, notes).shape == (48, 64, 3) and notes == []


def test_write_image_round_trips_rgb_to_non_ascii_paths(tmp_path):
    rgb = _rgb()
    folder = tmp_path / "数据 集"
    folder.mkdir()
    write_image(folder / "out.png", rgb)
    assert np.array_equal(read_image(folder / "out.png"), rgb)
    write_image(folder / "noext", rgb)  # no suffix: JPEG
    assert (folder / "noext").read_bytes()[:3] == b"\xff\xd8\xff"
