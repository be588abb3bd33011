"""Where predict.py's frames come from: `open_source(spec)` detects an image file, a folder of images, a glob
pattern, a video file or a webcam index ("0") and returns an iterable of `Frame`s (RGB uint8 images).

Bad input raises `SourceError` with one sentence naming the input and the fix.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from utils.common.errors import UserError
from utils.common.image_io import IMAGE_SUFFIXES, ImageReadError, read_image, truncation_warning
from utils.common.paths import check_user_path, glob_files

LOGGER = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv")
GLOB_CHARS = "*?["


class SourceError(UserError, ValueError):
    """An input that cannot be used as a --source; the message names it and says what to do."""


@dataclass
class Frame:
    """One image to detect on: `name` (a file name, or '<video stem>_<frame>' for video) and RGB uint8 (H, W, 3)."""

    name: str
    image: np.ndarray
    index: int
    output: str = ""  # where its outputs go, relative to the run folder ("a/img.jpg"); "" = `name`
    stem: str = ""  # the stem of its label file and crops ("a/img", or "a/img_png" when a/img.jpg is also an input)


def supported_types() -> str:
    return f"images {' '.join(IMAGE_SUFFIXES)}; videos {' '.join(VIDEO_SUFFIXES)}; a webcam index such as 0"


class ImageSource:
    """Image files in the given order, read lazily (so reading can run on a prefetch thread).

    With several files an unreadable one is logged and skipped; a single unreadable file is an error. A truncated
    JPEG is used as far as it decodes, with one warning line naming it.
    """

    kind = "images"
    fps = None

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.length: int | None = len(paths)
        self.skipped: list[str] = []
        self.outputs = output_names(paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            notes: list[str] = []
            try:
                image = read_image(path, notes)
            except ImageReadError as err:
                if len(self.paths) == 1:
                    raise SourceError(str(err)) from None
                LOGGER.warning("skipped %s", err)
                self.skipped.append(str(path))
                continue
            warning = truncation_warning(path, notes)
            if warning:
                LOGGER.warning("%s", warning)
            output, stem = self.outputs[index]
            yield Frame(path.name, image, index, output, stem)


def output_names(paths: list[Path]) -> list[tuple[str, str]]:
    """(output path, label/crop stem) per input, relative to the run folder and distinct for distinct inputs.

    Inputs from several folders (a glob such as 'dir/**/*.*') keep their path relative to the folder they share, so
    a/img.jpg and b/img.jpg write a/img.jpg and b/img.jpg; inputs of one folder keep their bare names. Label files and
    crops use the output path without its suffix, unless two inputs share it (a/img.jpg, a/img.png): then the suffix
    stays in the stem (a/img_jpg, a/img_png). Deterministic: the same inputs always get the same names."""
    if not paths:
        return []
    resolved = [p.absolute() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    outputs = [p.relative_to(common).as_posix() for p in resolved]
    stems = [output.rsplit(".", 1)[0] if "." in Path(output).name else output for output in outputs]
    shared = Counter(stem.casefold() for stem in stems)
    return [(output, stem if shared[stem.casefold()] == 1 else output.replace(".", "_"))
            for output, stem in zip(outputs, stems, strict=True)]


class VideoSource:
    """Frames of a video file or a webcam, in order; `length` is the frame count when the container states it."""

    def __init__(self, target: str | int, fps: float | None = None, length: int | None = None):
        self.target = target
        self.fps = fps
        self.length = length
        self.kind = "webcam" if isinstance(target, int) else "video"
        self.stem = f"webcam{target}" if isinstance(target, int) else Path(target).stem
        self.stride = 1

    def every(self, stride: int) -> VideoSource:
        """Keep every `stride`-th frame (--vid-stride); fps and length become those of the kept frames."""
        self.stride = stride
        self.fps = self.fps / stride if self.fps else None
        self.length = -(-self.length // stride) if self.length else None
        return self

    def __iter__(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(self.target)
        try:
            index = 0
            while True:
                if index % self.stride:  # skipped by --vid-stride: grabbed, not converted
                    ok, frame = capture.grab(), None
                else:
                    ok, frame = capture.read()
                if not ok:
                    return
                if frame is not None:
                    yield Frame(f"{self.stem}_{index:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), index)
                index += 1
        finally:
            capture.release()


def open_video(path: Path) -> VideoSource:
    """Check that OpenCV can open `path` and read a first frame; frame count and fps from the container."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise SourceError(f"video {path} cannot be opened by OpenCV (corrupt file or unsupported codec); "
                              f"re-encode it, e.g. ffmpeg -i {path.name} -c:v libx264 out.mp4")
        ok, _ = capture.read()
        if not ok:
            raise SourceError(f"video {path} opened but no frame could be read (empty, corrupt or unsupported "
                              f"codec); re-encode it, e.g. ffmpeg -i {path.name} -c:v libx264 out.mp4")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return VideoSource(str(path), fps=fps if fps and fps > 0 else None, length=count if count > 0 else None)


def open_webcam(index: int) -> VideoSource:
    capture = cv2.VideoCapture(index)
    try:
        if not capture.isOpened():
            raise SourceError(f"no webcam at index {index} (OpenCV could not open it); check that a camera is "
                              "connected and not used by another program, or try another index")
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return VideoSource(index, fps=fps if fps and fps > 0 else None)


def _images_in(paths: list[Path], what: str) -> ImageSource:
    images = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise SourceError(f"{what} contains no images (supported: {' '.join(IMAGE_SUFFIXES)}); "
                          "point --source at an image, a folder of images, a glob, a video or a webcam index")
    return ImageSource(images)


def open_source(spec: str | Path) -> ImageSource | VideoSource:
    """--source -> frames. Accepts an image file, a folder (its images, sorted, not recursive), a glob pattern
    ('data/*.jpg', '**' recursive), a video file, or a webcam index such as '0'."""
    text = str(spec)
    if text.isdigit():
        return open_webcam(int(text))
    if any(c in text for c in GLOB_CHARS) and not Path(text).exists():
        matches = glob_files(text)  # '**' never follows a link into a folder it has listed (a loop ends)
        if not matches:
            raise SourceError(f"the pattern {text!r} matches no files; check the folder and the pattern")
        return _images_in(matches, f"the pattern {text!r}")
    path = check_user_path(text, "--source", folder_ok=True)  # a FIFO or device would block the read forever
    if not path.exists():
        raise SourceError(f"source {path} not found; give an existing image, folder, glob pattern, video file or "
                          "webcam index")
    if path.is_dir():
        return _images_in(sorted(path.iterdir()), f"folder {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource([path])
    if suffix in VIDEO_SUFFIXES:
        return open_video(path)
    raise SourceError(f"source {path} has an unsupported type {suffix or '(no suffix)'}; "
                      f"supported: {supported_types()}")
