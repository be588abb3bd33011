"""The annotation model every dataset format reads into, and the checks every format shares.

A format's reader (utils/data/formats/) parses one image's annotation into a `RawAnnotation`: class names and boxes
(x1, y1, x2, y2) in the annotation's pixel grid, exactly as written, plus notes on what it could not use. Once the
image's real size is known, `RawAnnotation.objects` turns it into what the index keeps (`Objects`): the ground truth
as written (for evaluation) and the cleaned training targets (clipped to the image, zero-area, outside and repeated
boxes dropped), with a note for every change.

Nothing here raises on a single bad object: each problem becomes a note, so the index reports one line per file.
Only a file that cannot be used at all raises `AnnotationError`. Annotation files are untrusted:
- every value that is not a finite number (nan, inf, '1e999', text) makes its object a broken one, dropped with a
  note (`finite_number`, `whole_number`, `number_from_text`): it never reaches a box check, a metric or an int();
- a file may hold at most MAX_OBJECTS objects and MAX_ANNOTATION_BYTES bytes (checked before its content is kept);
- the notes of one file are summarised after the first few (`Notes`): a million repeated rows are a few lines.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.common.boxes import GroundTruthBoxes
from utils.common.errors import UserError

MAX_OBJECTS = 10_000  # per image: the densest public sets (SKU-110K, DOTA) stay far below; a detector keeps 300
MAX_ANNOTATION_BYTES = 16 << 20  # one image's annotation file (VOC XML, YOLO txt): a few KB in practice
MAX_CLASSES = 10_000  # a dataset's class list (as for a Darknet cfg): LVIS has 1203; each class widens the heads
MAX_NOTES_SHOWN = 10  # notes of one file printed in full; the rest are counted by kind in one more line


class AnnotationError(UserError, ValueError):
    """An annotation file that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------------- values
def finite_number(value: object) -> float | None:
    """`value` as a float when it is a finite JSON/YAML number (bool excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None


def whole_number(value: object) -> int | None:
    """`value` as an int when it is a whole finite number (7 or 7.0; bool excluded), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = finite_number(value)
    return int(number) if number is not None and number.is_integer() else None


def number_from_text(text: str | None) -> float | None:
    """A finite float from annotation text ('12', '3.5'); None for text, '', nan, inf, '1e999'."""
    try:
        number = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def quoted(name: str, limit: int = 40) -> str:
    """A name for a message: quoted, cut to `limit` characters (a hostile file can hold anything)."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


class Notes:
    """The problem notes of one file: the first `shown` in full, the others counted by kind, so that a file with a
    million bad rows gives a few lines and one count instead of a million lines (and a million strings)."""

    def __init__(self, shown: int = MAX_NOTES_SHOWN) -> None:
        self.shown = shown
        self.lines: list[str] = []
        self.hidden: Counter = Counter()

    def add(self, text: str, kind: str) -> None:
        """Note `text`; `kind` (a short phrase) is what the summary counts it as once `shown` notes are kept."""
        if len(self.lines) < self.shown:
            self.lines.append(text)
        else:
            self.hidden[kind] += 1

    def summary(self, prefix: str = "") -> list[str]:
        """The notes kept, then one note counting the others by kind ('{prefix}and 999995 more: repeated row
        x999995')."""
        if not self.hidden:
            return list(self.lines)
        counts = ", ".join(f"{kind} x{count}" for kind, count in self.hidden.most_common())
        return [*self.lines, f"{prefix}and {sum(self.hidden.values())} more like these ({counts})"]


# ---------------------------------------------------------------------------------------------------------- model
@dataclass
class Objects:
    """What one image's annotation yields once its size is known.

    truth: the known-class objects as written (float64 pixels, for evaluation); boxes float32 [N, 4] (x1, y1, x2, y2
    pixels), labels int64 [N], difficult bool [N]: the cleaned training targets; notes: what was fixed."""

    truth: GroundTruthBoxes
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    notes: list[str]


class ClassMap:
    """Class names -> contiguous indices, counting objects of other classes (reported, never used)."""

    def __init__(self, classes: list[str]) -> None:
        self.index = {name: i for i, name in enumerate(classes)}
        self.unknown: Counter = Counter()

    def known(self, raw: RawAnnotation, notes: list[str] | None = None) -> tuple[np.ndarray, GroundTruthBoxes]:
        """(mask of known-class objects, their ground truth as written); other classes are counted (and noted)."""
        known = np.array([name in self.index for name in raw.names], dtype=np.bool_)
        if not known.all():
            missing = Counter(name for name in raw.names if name not in self.index)
            self.unknown.update(missing)
            if notes is not None:
                notes.append("objects of classes not in the class list (not used): "
                             + ", ".join(f"{name} x{count}" for name, count in sorted(missing.items())))
        labels = np.array([self.index[n] for n in raw.names if n in self.index], dtype=np.int64)
        return known, GroundTruthBoxes(raw.boxes[known], labels, raw.difficult[known])


@dataclass
class RawAnnotation:
    """Objects of one image before class names are mapped to indices.

    boxes: float64 [N, 4] (x1, y1, x2, y2) in the annotation's pixel grid, exactly as written (finite: a value that
    is not was a note, and its object left out); names: N class names; difficult: bool [N] (VOC difficult=1, or COCO
    iscrowd); size: (height, width) stated by the file, None if absent or unusable.
    """

    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None
    notes: list[str] = field(default_factory=list)
    filename: str | None = None

    LINE_NOTES = False  # notes are phrases joined into one line per file (True: each note is a full problem line)

    def in_pixels(self, height: int, width: int) -> RawAnnotation:
        """The annotation with boxes in pixels of an image of this size (already pixels: itself)."""
        return self

    def objects(self, height: int, width: int, image_notes: list[str], classes: ClassMap,
                image: Path | None = None) -> Objects:
        """Truth and training targets on the real (height, width) image; notes: the file's, then the image's
        (`image_notes`), then what the checks changed."""
        notes = self.notes + image_notes
        if self.size is not None and self.size != (height, width):
            notes.append(f"annotation says {self.size[1]}x{self.size[0]} but the image is {width}x{height} "
                         "(used the image size; boxes kept as written)")
        known, truth = classes.known(self, notes)
        boxes = self.boxes[known].astype(np.float32, copy=True)
        keep = clip_boxes(boxes, height, width, notes)
        keep &= ~duplicated_boxes(boxes, truth.labels, keep, notes)
        return Objects(truth, boxes[keep], truth.labels[keep], truth.difficult[keep], notes)


def clip_boxes(boxes: np.ndarray, height: int, width: int, notes: list[str]) -> np.ndarray:
    """Clip boxes [N, 4] in place to the image; return the mask of boxes kept (finite, positive area after
    clipping). Notes what changed."""
    finite = np.isfinite(boxes).all(axis=1)  # readers drop non-finite values; this keeps a NaN from being "clipped"
    boxes[~finite] = 0
    inverted = finite & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    usable = finite & ~inverted
    outside = usable & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    changed = usable & ~outside & np.any(clipped != boxes, axis=1)
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} box(es) with a non-finite coordinate (dropped)")
    if inverted.any():
        notes.append(f"{int(inverted.sum())} box(es) with zero or negative area (dropped)")
    if outside.any():
        notes.append(f"{int(outside.sum())} box(es) entirely outside the {width}x{height} image (dropped)")
    if changed.any():
        notes.append(f"{int(changed.sum())} box(es) reaching outside the image (clipped)")
    boxes[:] = clipped
    return usable & ~outside


def duplicated_boxes(boxes: np.ndarray, labels: np.ndarray, keep: np.ndarray, notes: list[str]) -> np.ndarray:
    """Mask of kept objects that repeat an earlier kept object exactly (same class and box). A duplicate would count
    one object twice: evaluation could never match both, and training would weight it double."""
    rows = np.concatenate([labels[:, None].astype(np.float32), boxes], axis=1)
    duplicate = keep.copy()
    duplicate[np.flatnonzero(keep)[np.unique(rows[keep], axis=0, return_index=True)[1]]] = False
    if duplicate.any():
        notes.append(f"{int(duplicate.sum())} duplicated object(s) with the same class and box (dropped)")
    return duplicate


def read_bounded(path: Path, limit: int = MAX_ANNOTATION_BYTES) -> bytes:
    """The bytes of an annotation file, refused unread when larger than `limit` (AnnotationError naming it)."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise AnnotationError(f"{path}: {size} bytes is more than the {limit}-byte limit for one image's "
                                  "annotation; is it an annotation file?")
        return path.read_bytes()
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror or err}); check the file and its "
                              "permissions") from None


def too_many_objects(path: Path | str, count: int) -> AnnotationError:
    """The error for an annotation with more than MAX_OBJECTS objects (memory is bounded by rows, not only bytes)."""
    return AnnotationError(f"{path}: more than {MAX_OBJECTS} objects for one image ({count} seen); refused (the "
                           "limit bounds memory per image): check the file, or split the image into tiles")
