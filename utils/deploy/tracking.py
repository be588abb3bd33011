"""predict.py --track: multi-object tracking with stable IDs over videos, webcams, streams and image sequences.

Association: ByteTrack by default (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection
Box", ECCV 2022), or another tracker of Roboflow's `trackers` package chosen with --tracker (TRACKERS: SORT,
OC-SORT, BoT-SORT, C-BIoU), each built from the same TrackOptions. ByteTrack keeps a Kalman filter per track, a first
IoU association of the detections scoring at least --conf, a second one of the weaker detections (down to
--track-low) with the tracks still unmatched, so an object whose score dips for a few frames keeps its ID. New tracks
need --conf + 0.1 (the reference's new-track threshold) and two frames in a row; a lost track waits --track-buffer
frames (counted at 30 fps, scaled to the source's frame rate) for its object to come back.

On top of any tracker, re-linking (--track-relink, this project's): a newly confirmed track that starts near where
a lost track of its class was last seen (or would be, moving on) takes that track's ID, so an object coming back from
behind another keeps its ID even when the tracker's Kalman prediction has drifted away from it.

Every source of a run has its own tracker (IDs are per source). A live stream that reconnects keeps its tracks when
the gap is shorter than --track-gap seconds; after a longer gap its objects have moved on, so its tracks end and
new ones start, with IDs that go on counting (an ID is never reused within one file).

Outputs: tracked detections as float32 ndarray[K, 7] (x1, y1, x2, y2, score, class, track id >= 1) in original-image
pixels; per source, tracks/<stem>.txt in the MOTChallenge layout `frame,id,x,y,w,h,score,class,-1,-1` (frame
1-based, its index in the source; x, y the top-left corner; class the model's 0-based index); a summary line per
source (tracks seen, per class: a track's class is the one it was detected as most often).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from utils.common.errors import ConfigError, MissingDependencyError
from utils.common.filenames import safe_stem
from utils.common.registry import Registry

LOGGER = logging.getLogger(__name__)
NEW_TRACK_MARGIN = 0.1  # a new track needs conf + this (ByteTrack's reference: new_track_thresh = track_thresh + 0.1)
DEFAULT_FPS = 30.0  # ByteTrack's buffer is counted in frames at 30 fps
TRACK_COLUMNS = 7  # x1, y1, x2, y2, score, class, track id
ALL_CLASSES = -1  # the key of the one tracker that sees every class (TrackOptions.per_class off)


@dataclass
class TrackOptions:
    """The tracker's settings (ByteTrack's names; TRACKERS maps them onto each tracker's own). Scores are
    objectness x class probability, as --conf."""

    tracker: str = "bytetrack"  # a name in TRACKERS
    conf: float = 0.5  # first association; conf + NEW_TRACK_MARGIN starts a track
    low: float = 0.1  # detections from this score up keep unmatched tracks alive (second association)
    match_iou: float = 0.2  # least IoU between a track's predicted box and a detection (ByteTrack's 0.8 cost = 1 - IoU)
    buffer: int = 30  # frames (at 30 fps) that a lost track waits for its object
    min_frames: int = 2  # frames in a row before a track gets its ID
    gap_seconds: float = 5.0  # a live source silent for longer (a reconnect) starts its tracks anew
    per_class: bool = False  # one tracker per class: a box never joins a track of another class
    relink: float = 1.0  # a new track continues a lost one of its class this near (in its sizes); 0: never

    def check(self) -> TrackOptions:
        """Self, or ConfigError naming the flag that is out of range."""
        TRACKERS.get(self.tracker)  # an unknown name is a ConfigError listing the valid ones
        checks = [(0 < self.conf <= 1, f"--conf {self.conf}: give a score in (0, 1]"),
                  (0 < self.low <= self.conf, f"--track-low {self.low}: give a score above 0 and at most --conf "
                                              f"({self.conf})"),
                  (0 < self.match_iou < 1, f"--track-iou {self.match_iou}: give an IoU between 0 and 1"),
                  (self.buffer >= 0, f"--track-buffer {self.buffer}: give 0 or more frames"),
                  (self.relink >= 0, f"--track-relink {self.relink}: give 0 (off) or a distance in box sizes"),
                  (self.gap_seconds > 0, f"--track-gap {self.gap_seconds}: give a number of seconds above 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


TRACKERS: Registry[Callable[[TrackOptions, float], Any]] = Registry("tracker")


def trackers_package() -> Any:
    """The `trackers` module, or MissingDependencyError with the line to install it."""
    try:
        import trackers  # local: optional dependency, only --track needs it
    except ImportError as err:
        raise MissingDependencyError(f"--track needs the trackers package ({err}): pip install 'trackers>=2.1,<3'") \
            from err
    return trackers


@TRACKERS.register("bytetrack")
def bytetrack_tracker(options: TrackOptions, fps: float) -> Any:
    """ByteTrack: two associations (--conf, then down to --track-low), new tracks from --conf + 0.1."""
    return trackers_package().ByteTrackTracker(
        lost_track_buffer=options.buffer, frame_rate=fps, track_activation_threshold=new_track_score(options),
        minimum_consecutive_frames=options.min_frames, minimum_iou_threshold=options.match_iou,
        high_conf_det_threshold=options.conf)


@TRACKERS.register("ocsort")
def ocsort_tracker(options: TrackOptions, fps: float) -> Any:
    """OC-SORT (Cao et al., CVPR 2023): a lost track is re-updated from its last observations when it is found again,
    and the association adds the direction of motion; detections below --conf are not associated."""
    return trackers_package().OCSORTTracker(
        lost_track_buffer=options.buffer, frame_rate=fps, minimum_consecutive_frames=options.min_frames,
        minimum_iou_threshold=options.match_iou, high_conf_det_threshold=options.conf)


@TRACKERS.register("botsort")
def botsort_tracker(options: TrackOptions, fps: float) -> Any:
    """BoT-SORT (Aharon et al., 2022) without appearance: ByteTrack's two associations on IoU x score, a Kalman state
    of width and height, and camera-motion compensation (sparse optical flow on the frame)."""
    return trackers_package().BoTSORTTracker(
        lost_track_buffer=options.buffer, frame_rate=fps, track_activation_threshold=new_track_score(options),
        minimum_consecutive_frames=options.min_frames, minimum_iou_threshold_first_assoc=options.match_iou,
        high_conf_det_threshold=options.conf, enable_cmc=True)


USES_FRAME = frozenset({"botsort"})  # trackers given each frame (the others would only pay for its BGR copy)


@TRACKERS.register("sort")
def sort_tracker(options: TrackOptions, fps: float) -> Any:
    """SORT (Bewley et al., 2016): one IoU association of the detections from --conf; the simplest baseline."""
    return trackers_package().SORTTracker(
        lost_track_buffer=options.buffer, frame_rate=fps, track_activation_threshold=options.conf,
        minimum_consecutive_frames=options.min_frames, minimum_iou_threshold=options.match_iou)


@TRACKERS.register("cbiou")
def cbiou_tracker(options: TrackOptions, fps: float) -> Any:
    """C-BIoU (Yang et al., WACV 2023): BoT-SORT's cascade on buffered (enlarged) boxes, for fast or irregular
    motion."""
    return trackers_package().CBIoUTracker(
        lost_track_buffer=options.buffer, frame_rate=fps, track_activation_threshold=new_track_score(options),
        minimum_consecutive_frames=options.min_frames, minimum_iou_threshold_first_assoc=options.match_iou,
        high_conf_det_threshold=options.conf)


def new_track_score(options: TrackOptions) -> float:
    return min(1.0, options.conf + NEW_TRACK_MARGIN)


def new_tracker(options: TrackOptions, fps: float | None) -> Any:
    """A fresh tracker of kind options.tracker, its buffer scaled to the source's frame rate (30 when unknown)."""
    return TRACKERS.get(options.tracker)(options, fps or DEFAULT_FPS)


def to_supervision(detections: np.ndarray) -> Any:
    """ndarray[K, 6] (x1, y1, x2, y2, score, class) -> supervision.Detections, with each row's index kept in
    data["row"] (the tracker may reorder and drop rows)."""
    import supervision as sv  # the trackers package's own dependency

    return sv.Detections(xyxy=detections[:, :4].astype(np.float32), confidence=detections[:, 4].astype(np.float32),
                         class_id=detections[:, 5].astype(int), data={"row": np.arange(len(detections))})


RECENT_BOXES = 8  # boxes per track kept for its velocity and size


class TrackHistory:
    """What SourceTracks remembers of one written ID, to recognise it when its object comes back under a new track:
    its last RECENT_BOXES boxes with their frame numbers."""

    def __init__(self) -> None:
        self.boxes: deque[tuple[int, np.ndarray]] = deque(maxlen=RECENT_BOXES)

    def add(self, frame: int, box: np.ndarray) -> None:
        self.boxes.append((frame, box))

    @property
    def last_frame(self) -> int:
        return self.boxes[-1][0]

    @property
    def last_box(self) -> np.ndarray:
        return self.boxes[-1][1]

    def distance(self, frame: int, box: np.ndarray) -> float:
        """How far `box` is from where this track was last seen or, moving on at its last velocity, would be now,
        in units of the track's largest recent size (an object coming out from behind another grows back to it)."""
        (first_frame, first), (last_frame, last) = self.boxes[0], self.boxes[-1]
        last_centre = box_centre(last)
        velocity = (last_centre - box_centre(first)) / max(1, last_frame - first_frame)
        predicted = last_centre + velocity * (frame - last_frame)
        nearest = min(np.linalg.norm(box_centre(box) - where) for where in (last_centre, predicted))
        size = max(max(past[2] - past[0], past[3] - past[1]) for _, past in self.boxes)
        return float(nearest / max(size, 1.0))


def box_centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:4]) / 2


EDGE_MARGIN = 4.0  # px: a box this near the frame's edge may be leaving or entering the picture, not hiding


class SourceTracks:
    """The tracker(s) of one source, its IDs (1-based, never reused) and each track's classes. With
    options.per_class, each class has its own tracker, so a box is only ever matched to a track of its own class;
    otherwise one tracker sees every class.

    Re-linking (options.relink): a tracker gives an object a new track when it comes back from behind another one
    with a box too far from its Kalman prediction (the prediction drifts while only part of the object shows). When a
    track is confirmed, the lost tracks of its class (unseen for at most the tracker's buffer) are candidates: the
    nearest within options.relink of its sizes, from its last position or that position moved on at its last
    velocity, lends the new track its ID. Neither box may touch the frame's edge: there one object leaves and
    another enters (the right and bottom edges are known once a frame has been given)."""

    def __init__(self, options: TrackOptions, fps: float | None, make_tracker: Callable[[TrackOptions, float | None],
                                                                                     Any] = new_tracker):
        self.options, self.fps, self.make_tracker = options, fps, make_tracker
        self.trackers: dict[int, Any] = {}  # class (or ALL_CLASSES) -> its tracker, made when first needed
        self.ids: dict[tuple[int, int], int] = {}  # (tracker key, the tracker's own ID) -> the ID written out
        self.next_id = 1  # never reset, not even by restart(): an ID is never reused within a source
        self.classes: dict[int, Counter] = defaultdict(Counter)
        self.history: dict[int, TrackHistory] = {}  # written ID -> its recent boxes
        self.lost_frames = int(options.buffer * (fps or DEFAULT_FPS) / DEFAULT_FPS)  # as the trackers count it
        self.frame = 0  # frames seen by this source's trackers
        self.frame_size: tuple[int, int] | None = None  # (height, width), from the frames when they are given
        self.last_update: float | None = None

    def restart(self) -> None:
        """End every track (the source was silent too long); later IDs continue after the highest so far."""
        self.trackers.clear()
        self.ids.clear()
        self.history.clear()

    def update(self, detections: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
        """One frame's ndarray[K, 6] -> its tracked rows ndarray[K', 7] (detections of no confirmed track dropped),
        in the detections' order. `image` (RGB uint8, optional) is the frame, for trackers that compensate camera
        motion (BoT-SORT); the others ignore it."""
        if image is not None:
            self.frame_size = image.shape[:2]
        wants_frame = image is not None and self.options.tracker in USES_FRAME
        frame = np.ascontiguousarray(image[..., ::-1]) if wants_frame else None  # the trackers package reads BGR
        keys = detections[:, 5].astype(int) if self.options.per_class else np.full(len(detections), ALL_CLASSES)
        matched: list[tuple[int, int, int]] = []  # (row of detections, tracker key, the tracker's ID)
        for key in sorted(set(keys.tolist()) | set(self.trackers)):  # every tracker steps, with boxes or without
            if key not in self.trackers:
                self.trackers[key] = self.make_tracker(self.options, self.fps)
            subset = np.flatnonzero(keys == key)
            key_rows, key_ids = self._step(self.trackers[key], detections[subset], frame)
            matched.extend((int(row), key, int(local)) for row, local in zip(subset[key_rows], key_ids, strict=True))
        matched.sort()
        ids = self._written_ids(detections, matched)
        rows = np.array([row for row, _, _ in matched], np.int64)
        tracked = np.column_stack([detections[rows, :6], ids]).astype(np.float32).reshape(-1, TRACK_COLUMNS)
        for track_id, box, label in zip(ids, detections[rows, :4], detections[rows, 5].astype(int).tolist(),
                                        strict=True):
            self.classes[track_id][label] += 1
            self._remember(track_id, box)
        self.frame += 1
        self._forget_ended()
        return tracked

    def _written_ids(self, detections: np.ndarray, matched: list[tuple[int, int, int]]) -> list[int]:
        """The written ID of each matched row: the one its track already has; for a newly confirmed track, a lost
        track's (re-linking) or the next unused one."""
        seen = {self.ids[(key, local)] for _, key, local in matched if (key, local) in self.ids}
        ids = []
        for row, key, local in matched:
            if (key, local) not in self.ids:
                track_id = self._relink(detections[row], exclude=seen)
                if track_id is None:
                    track_id, self.next_id = self.next_id, self.next_id + 1
                else:  # the old track, should its tracker find it again, comes back under a new ID
                    self.ids = {pair: value for pair, value in self.ids.items() if value != track_id}
                self.ids[(key, local)] = track_id
                seen.add(track_id)
            ids.append(self.ids[(key, local)])
        return ids

    def _relink(self, detection: np.ndarray, exclude: set[int]) -> int | None:
        """The lost track of the detection's class nearest to it within options.relink sizes, or None."""
        if self.options.relink <= 0 or self._at_edge(detection[:4]):
            return None
        label, best, best_distance = int(detection[5]), None, self.options.relink
        for track_id, history in self.history.items():
            if track_id in exclude or not self._within_buffer(history) or self._at_edge(history.last_box):
                continue
            if self.classes[track_id].most_common(1)[0][0] != label:
                continue
            distance = history.distance(self.frame, detection[:4])
            if distance <= best_distance:
                best, best_distance = track_id, distance
        return best

    def _at_edge(self, box: np.ndarray) -> bool:
        x1, y1, x2, y2 = box
        height, width = self.frame_size or (np.inf, np.inf)
        return bool(min(x1, y1) <= EDGE_MARGIN or x2 >= width - EDGE_MARGIN or y2 >= height - EDGE_MARGIN)

    def _remember(self, track_id: int, box: np.ndarray) -> None:
        self.history.setdefault(track_id, TrackHistory()).add(self.frame, box.astype(float))

    def _forget_ended(self) -> None:
        """Drop the histories of tracks lost for longer than any tracker keeps them."""
        for track_id in [key for key, past in self.history.items() if not self._within_buffer(past)]:
            del self.history[track_id]

    def _within_buffer(self, history: TrackHistory) -> bool:
        """Last seen at most the trackers' buffer ago (histories are updated after the frame is tracked)."""
        return self.frame - history.last_frame <= self.lost_frames + 1

    @staticmethod
    def _step(tracker: Any, detections: np.ndarray, frame: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One tracker's update: (rows of `detections` with a confirmed track, the tracker's IDs of those)."""
        result = tracker.update(to_supervision(detections), frame=frame)
        if not len(result):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids = np.asarray(result.tracker_id, dtype=np.int64)
        confirmed = ids >= 0
        return np.asarray(result.data["row"], dtype=np.int64)[confirmed], ids[confirmed]

    def class_counts(self) -> Counter:
        """Tracks per class, each track counted once as its most frequent class."""
        return Counter(counts.most_common(1)[0][0] for counts in self.classes.values())


def mot_lines(frame_number: int, tracked: np.ndarray) -> list[str]:
    """MOTChallenge rows `frame,id,x,y,w,h,score,class,-1,-1` of one frame (frame_number 1-based)."""
    lines = []
    for x1, y1, x2, y2, score, label, track_id in tracked.tolist():
        lines.append(f"{frame_number},{int(track_id)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},"
                     f"{int(label)},-1,-1")
    return lines


def sequence_stem(paths: list[Path]) -> str:
    """The stem of an image sequence's MOTChallenge file: the name of the folder holding its images."""
    return safe_stem(Path(paths[0]).absolute().parent.name, fallback="images") if paths else "images"


class Tracking:
    """The trackers of a run, one per source, and their MOTChallenge files under save_dir/tracks/ (none when
    save_dir is None). `live` names the sources whose gaps are measured (stream URLs)."""

    def __init__(self, options: TrackOptions, save_dir: Path | None, class_names: list[str],
                 fps_of: Callable[[str], float | None] = lambda stem: None, live: frozenset[str] = frozenset(),
                 make_tracker: Callable[[TrackOptions, float | None], Any] = new_tracker):
        self.options, self.class_names, self.fps_of, self.live = options.check(), class_names, fps_of, live
        self.make_tracker = make_tracker
        self.folder = Path(save_dir) / "tracks" if save_dir is not None else None
        self.sources: dict[str, SourceTracks] = {}
        self._files: dict[str, TextIO] = {}
        self.written: dict[str, Path] = {}  # source stem -> its MOTChallenge file
        make_tracker(options, None)  # fail now, before any frame, when the trackers package is missing

    def update(self, stem: str, frame_index: int, detections: np.ndarray, image: np.ndarray | None = None
               ) -> np.ndarray:
        """Track one frame (`frame_index` 0-based in its source) of source `stem`: ndarray[K, 6] -> [K', 7].
        `image` is the frame itself (RGB), used by trackers that compensate camera motion."""
        source = self.sources.get(stem)
        if source is None:
            source = self.sources[stem] = SourceTracks(self.options, self.fps_of(stem), self.make_tracker)
        now = time.monotonic()
        if stem in self.live and source.last_update is not None and now - source.last_update > \
                self.options.gap_seconds:
            LOGGER.warning("%s: no frame for %.1f s (over --track-gap %g): its tracks end, new ones start", stem,
                           now - source.last_update, self.options.gap_seconds)
            source.restart()
        source.last_update = now
        tracked = source.update(detections, image)
        self._write(stem, frame_index, tracked)
        return tracked

    def _write(self, stem: str, frame_index: int, tracked: np.ndarray) -> None:
        if self.folder is None or not len(tracked):
            return
        handle = self._files.get(stem)
        if handle is None:  # stems are sanitised and unique per run (utils.deploy.sources / streams)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.written[stem] = self.folder / f"{stem}.txt"
            handle = self._files[stem] = self.written[stem].open("w", encoding="utf-8")
        handle.write("".join(line + "\n" for line in mot_lines(frame_index + 1, tracked)))

    def summary_lines(self) -> list[str]:
        """'<source>: 12 tracks (7 circle, 5 square)' per source, in the order the sources first sent a frame."""
        lines = []
        for stem, source in self.sources.items():
            counts = source.class_counts()
            total = sum(counts.values())
            ranked = sorted(counts.items(), key=lambda item: (-item[1], self._name(item[0])))  # most first, then A-Z
            per_class = ", ".join(f"{n} {self._name(label)}" for label, n in ranked)
            where = f" -> {self.written[stem]}" if stem in self.written else ""
            lines.append(f"{stem}: {total} track{'s' if total != 1 else ''}" + (f" ({per_class})" if total else "")
                         + where)
        return lines

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
