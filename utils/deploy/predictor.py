"""predict.py's engine: run a detector over a source and write what the user asked for into the run folder:
annotated images (or one annotated video per video source), YOLO-style label files (`--save-txt`), per-object crops
(`--save-crop`), objectness heat maps (`--heatmap`), a window (`--show`), and the per-class counts.

Detections are float32 ndarray[K, 6] (x1, y1, x2, y2, score, class) in original-image pixels.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from utils.common.atomic import temporary_name, write_text_atomic
from utils.common.filenames import unique_stems
from utils.common.image_io import write_image
from utils.common.text import printable
from utils.common.visualize import draw_detections
from utils.deploy.sources import Frame, ImageSource, VideoSource
from utils.deploy.streams import StreamFrame, StreamSet
from utils.deploy.tracking import Tracking, sequence_stem
from utils.runtime.detector import BaseDetector, objectness_map, overlay_heatmap

LOGGER = logging.getLogger(__name__)
DEFAULT_VIDEO_FPS = 25.0


def yolo_lines(detections: np.ndarray, height: int, width: int) -> list[str]:
    """'class x_center y_center width height confidence' per detection, coordinates normalised to [0, 1]."""
    lines = []
    for x1, y1, x2, y2, score, label in detections.tolist():
        xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{int(label)} {xc:.6f} {yc:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {score:.6f}")
    return lines


class ResultWriter:
    """Writes one run's outputs under `save_dir` and counts detections per class."""

    def __init__(self, save_dir: Path | None, class_names: list[str], save_images: bool = True,
                 save_txt: bool = False, save_crop: bool = False, video_fps: float | None = None):
        """save_dir None: nothing is written, detections are only counted."""
        self.save_dir, self.class_names = Path(save_dir) if save_dir else None, class_names
        self.save_images, self.save_txt, self.save_crop = save_images, save_txt, save_crop
        self._crop_folders = unique_stems(class_names, fallback="class")
        self.video_fps = video_fps or DEFAULT_VIDEO_FPS
        self.counts: Counter = Counter()
        self.images = 0
        self._video: cv2.VideoWriter | None = None
        self.video_path: Path | None = None
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)

    def write(self, frame: Frame, detections: np.ndarray, annotated: np.ndarray | None, video_stem: str | None = None
              ) -> None:
        """Record one frame; `video_stem` set means frames go into `<video_stem>.mp4` instead of image files."""
        self.images += 1
        self.counts.update(self.class_name(int(c)) for c in detections[:, 5])
        if self.save_dir is None:
            return
        stem = frame.stem or Path(frame.name).stem  # distinct per input (utils.deploy.sources.output_names)
        if annotated is not None and self.save_images:
            if video_stem is not None:
                self._write_video_frame(video_stem, annotated)
            else:
                name = frame.output or frame.name
                name = name if Path(name).suffix else f"{name}.jpg"
                (self.save_dir / name).parent.mkdir(parents=True, exist_ok=True)
                write_image(self.save_dir / name, annotated)
        if self.save_txt:
            label = self.save_dir / "labels" / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            lines = yolo_lines(detections, *frame.image.shape[:2])
            write_text_atomic(label, "".join(line + "\n" for line in lines))  # never a cut list that looks whole
        if self.save_crop:
            self._write_crops(frame.image, detections, stem)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def crop_folder(self, label: int) -> str:
        """A folder name per class that stays inside crops/ and is not shared (class names can be hostile)."""
        return self._crop_folders[label] if 0 <= label < len(self._crop_folders) else str(label)

    def _write_crops(self, image: np.ndarray, detections: np.ndarray, stem: str) -> None:
        for k, (x1, y1, x2, y2, _, label) in enumerate(detections.tolist()):
            x1, y1, x2, y2 = int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))
            if x2 <= x1 or y2 <= y1:
                continue
            crop = self.save_dir / "crops" / self.crop_folder(int(label)) / f"{stem}_{k}.jpg"
            crop.parent.mkdir(parents=True, exist_ok=True)
            write_image(crop, image[y1:y2, x1:x2])

    def _write_video_frame(self, stem: str, annotated: np.ndarray) -> None:
        if self._video is None:
            # written under a hidden temporary name and renamed by close(): a killed run leaves no cut video that
            # looks like a result
            self.video_path = self.save_dir / f"{stem}.mp4"
            self._video_tmp = temporary_name(self.video_path, ".mp4")
            height, width = annotated.shape[:2]
            self._video = cv2.VideoWriter(os.fspath(self._video_tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.video_fps, (width, height))
            if not self._video.isOpened():
                self._video = None  # nothing to rename in close()
                raise OSError(f"OpenCV cannot write the video {self.video_path} (no mp4v encoder?)")
        self._video.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
            os.replace(self._video_tmp, self.video_path)

    def counts_text(self) -> str:
        """'3 raccoon, 1 dog' (most frequent first) or 'no detections'."""
        return ", ".join(f"{n} {printable(name)}" for name, n in self.counts.most_common()) or "no detections"


def display_available() -> bool:
    """False on a Linux/BSD session without X11 or Wayland (ssh, CI, containers), where cv2.imshow would abort."""
    if os.name == "nt" or os.uname().sysname == "Darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show(annotated: np.ndarray, title: str = "predict") -> bool:
    """Show a frame in an OpenCV window; False when the user pressed q or Esc."""
    try:
        cv2.imshow(title, cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as err:
        raise OSError(f"--show could not open a window ({str(err).strip().splitlines()[-1]}); OpenCV may be the "
                      "headless build; drop --show and look at the saved images instead") from None
    return key not in (ord("q"), 27)


def annotate(detector: BaseDetector, frame: Frame, detections: np.ndarray, decoded, info, heatmap: bool
             ) -> np.ndarray:
    """The frame with boxes and captions drawn, over its objectness heat map when `heatmap`. `detections` [K, 6],
    or [K, 7] with track IDs (utils.deploy.tracking) drawn in the captions."""
    image = frame.image
    if heatmap:
        heat = objectness_map(decoded, detector.config, detector.input_shape)
        image = overlay_heatmap(image, heat, info)
    track_ids = detections[:, 6] if detections.shape[1] > 6 else None
    return draw_detections(image, detections[:, :4], detections[:, 5], detector.config.classes, detections[:, 4],
                           track_ids)


def track_stem_of(source: ImageSource | VideoSource | StreamSet) -> Callable[[Frame], str]:
    """Which tracker a frame belongs to: its stream's (a StreamSet), the video's, or the image sequence's."""
    if isinstance(source, StreamSet):
        return lambda frame: frame.source
    stem = source.stem if isinstance(source, VideoSource) else sequence_stem(source.paths)
    return lambda frame: stem


def predict_source(detector: BaseDetector, source: ImageSource | VideoSource, writer: ResultWriter,
                   batch_size: int = 1, heatmap: bool = False, show_window: bool = False,
                   tracking: Tracking | None = None) -> None:
    """Detect on every frame of `source` (reading overlapped with inference) and hand each to `writer`; with
    `tracking`, each frame's detections go through its source's tracker first (only tracked ones are kept)."""
    need_drawing = show_window or (writer.save_dir is not None and writer.save_images)
    video_stem = getattr(source, "stem", None) if isinstance(source, VideoSource) else None
    unit = "img" if isinstance(source, ImageSource) else "frame"
    stem_of = track_stem_of(source) if tracking is not None else None
    with tqdm(total=source.length, unit=unit, disable=source.length == 1, leave=False) as bar:
        for chunk, results, decoded in detector.stream(source, batch_size, image_of=lambda frame: frame.image):
            for i, (prepared, dets) in enumerate(zip(chunk, results, strict=True)):
                frame = prepared.item
                if tracking is not None:
                    dets = tracking.update(stem_of(frame), frame.index, dets, frame.image)
                annotated = (annotate(detector, frame, dets, None if decoded is None else decoded[i],
                                      prepared.info, heatmap) if need_drawing else None)
                writer.write(frame, dets[:, :6], annotated, video_stem)
                if show_window and not show(annotated):
                    return
            bar.update(len(chunk))


class StreamWriters:
    """A ResultWriter per source of a StreamSet, all in one run folder: `<source stem>.mp4` each (at the source's
    own frame rate) and labels/<source stem>_<frame>.txt; counts are summed for the report. Duck-types
    ResultWriter for `predict_source`."""

    def __init__(self, save_dir: Path | None, class_names: list[str], source: StreamSet, save_images: bool = True,
                 save_txt: bool = False, save_crop: bool = False):
        self.save_dir, self.save_images, self.source = save_dir, save_images, source
        self._make = lambda fps: ResultWriter(save_dir, class_names, save_images, save_txt, save_crop, fps)
        self.writers: dict[str, ResultWriter] = {}

    def write(self, frame: StreamFrame, detections: np.ndarray, annotated: np.ndarray | None,
              video_stem: str | None = None) -> None:
        writer = self.writers.get(frame.source)
        if writer is None:
            writer = self.writers[frame.source] = self._make(self.source.fps_of(frame.source))
        writer.write(frame, detections, annotated, frame.source)

    @property
    def images(self) -> int:
        return sum(writer.images for writer in self.writers.values())

    @property
    def counts(self) -> Counter:
        return sum((writer.counts for writer in self.writers.values()), Counter())

    def counts_text(self) -> str:
        return ", ".join(f"{n} {printable(name)}" for name, n in self.counts.most_common()) or "no detections"

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
