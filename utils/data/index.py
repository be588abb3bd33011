"""Dataset indexing: any dataset format (utils/data/formats/: VOC, COCO json, YOLO, images/ + annotations/) ->
`DatasetIndex`.

Where data enters the project. `load_split` finds the format of --data (utils.data.formats.detect_format, the one
place that decides), lets its reader list the split's images and parsed annotations, then checks every image the
same way for every format: each problem becomes one line naming the file (logged and kept in
`DatasetIndex.problems`), nothing crashes, nothing is dropped silently. Boxes are (x1, y1, x2, y2) in the stored
pixel grid of the image (EXIF orientation ignored, see utils/common/image_io.py).

Two views of each image's objects (utils.data.annotations.Objects):
- `boxes/labels/difficult`: the training targets, cleaned (clipped to the image, zero-area and exact duplicates
  dropped); `difficult` flags VOC difficult=1 and COCO iscrowd, left out of training unless `keep_difficult`.
- `truth`: the ground truth that evaluation scores, every known-class object exactly as the annotation file states it
  (nothing clipped or dropped, difficult flagged), as the VOC devkit and pycocotools read the raw files.
With `keep_unreadable=True` (evaluation) an image that cannot be read stays in the split with `image_error` set, so its
objects count as missed instead of leaving the denominator.

Splits: one policy for every format (utils/data/reader.py). A split the dataset does not state is made in
memory (seed 0 unless asked otherwise, so train.py and eval.py make the same one) and never written into the
dataset; `DatasetIndex.write_split(run_dir)` records it in the run folder as splits/<split>.txt (one JSON string per
line: names with spaces, tabs or newlines stay whole; `read_split_file` reads it back).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.common.boxes import GroundTruthBoxes
from utils.common.errors import DatasetError, MissingFileError
from utils.common.image_io import ImageReadError, image_size, probe_image
from utils.common.paths import UnsafePathError, check_user_path, resolve_inside
from utils.data.annotations import MAX_CLASSES, AnnotationError, ClassMap, RawAnnotation
from utils.data.formats import FORMATS, detect_format
from utils.data.reader import SPLITS, Entry, SourceSplit, make_splits

__all__ = ["DATA_HELP", "SPLITS", "UNFINISHED_MARKER", "DatasetIndex", "EmptySplitError", "ImageRecord",
           "load_split", "make_splits", "missed_objects", "read_split_file", "shared_images"]

LOGGER = logging.getLogger(__name__)
DATA_HELP = "a dataset: " + "; or ".join(reader.description for _, reader in FORMATS.items())
# A folder that utils.convert is still writing (or was killed while writing) holds this file: it is refused as data.
UNFINISHED_MARKER = ".convert_unfinished"


@dataclass
class ImageRecord:
    """One image of a split. boxes: float32 [N, 4] (x1, y1, x2, y2) original pixels, labels: int64 [N] and
    difficult: bool [N] are the cleaned training targets; width/height: the real image size (the annotation's, or 0,
    when the image is unreadable); coco_id: the json's image id for COCO sources; truth: the objects as annotated
    (see the module docstring; None for hand-built records, whose boxes are their truth); image_error: why the image
    cannot be read (evaluation indexes only), else None."""

    path: Path
    image_id: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int = 0
    height: int = 0
    coco_id: int | None = None
    truth: GroundTruthBoxes | None = None
    image_error: str | None = None

    def ground_truth(self) -> GroundTruthBoxes:
        """What evaluation scores: the annotated objects as written (float64 boxes, labels, difficult flags)."""
        return self.truth if self.truth is not None else GroundTruthBoxes(self.boxes, self.labels, self.difficult)


@dataclass
class DatasetIndex:
    """The records of one split, the class list, and every problem met while reading it (one line per file).

    pixel_offset: the IoU convention of its boxes, stated by the format's reader (1: the VOC devkit's inclusive
    pixels, 0: continuous coordinates as COCO and YOLO); hand-built indexes default to the devkit's. made_split: the
    split's members (paths relative to the dataset folder) when the split was made in memory, else None."""

    records: list[ImageRecord]
    classes: list[str]
    problems: list[str] = field(default_factory=list)
    split: str = "train"
    fixed: int = 0
    skipped: int = 0
    background: int = 0
    unknown_objects: dict[str, int] = field(default_factory=dict)
    keep_difficult: bool = False
    refused: int = 0  # entries whose path leaves the dataset or is no regular file (skipped, also by evaluation)
    coco_json: Path | None = None  # the instances json of a COCO source (pycocotools scores against it as written)
    pixel_offset: float = 1.0
    source_format: str = ""  # the registered name of the format it was read as ("voc", "coco", ...)
    made_split: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def unreadable(self) -> list[ImageRecord]:
        """Records whose image cannot be read (only in indexes loaded with keep_unreadable)."""
        return [r for r in self.records if r.image_error is not None]

    def summary(self, problems_file: str | Path | None = None) -> str:
        """One line such as '200 images (3 background), 2 fixed, 1 skipped (see runs/x/data_problems_train.txt)'."""
        line = f"{len(self.records)} images ({self.background} background), {self.fixed} fixed, {self.skipped} skipped"
        if self.unreadable:
            line += f", {len(self.unreadable)} unreadable (their objects count as missed)"
        if self.unknown_objects:
            unknown = ", ".join(f"{name} x{count}" for name, count in sorted(self.unknown_objects.items()))
            line += f"; objects of classes not in the class list (not used): {unknown}"
        if self.problems:
            line += f" (see {problems_file})" if problems_file else " (see DatasetIndex.problems)"
        return line

    def ground_truth_summary(self) -> str:
        """What evaluation scores, e.g. 'test: 32 images, 1 unreadable (its 2 objects count as missed), 49 objects'.

        Objects are the scored (non-difficult) ones of the index's classes, unreadable images' included."""
        def scored(record: ImageRecord) -> int:
            return int((~record.ground_truth().difficult).sum())
        unreadable = self.unreadable
        line = f"{self.split}: {len(self.records)} images"
        if unreadable:
            line += f", {len(unreadable)} unreadable ({missed_objects(sum(map(scored, unreadable)), len(unreadable))})"
        line += f", {sum(scored(r) for r in self.records)} objects"
        if self.refused:
            line += f" ({self.refused} refused: path outside the dataset or not a regular file; not scored)"
        difficult = sum(int(r.ground_truth().difficult.sum()) for r in self.records)
        return line + (f" ({difficult} difficult, not scored)" if difficult else "")

    def write_problems(self, run_dir: str | Path) -> Path:
        """Write every problem line into `run_dir/data_problems_<split>.txt` and return that path."""
        path = Path(run_dir) / f"data_problems_{self.split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# {self.summary(path)}\n"
        path.write_text(header + "".join(line + "\n" for line in self.problems), encoding="utf-8")
        return path

    def write_split(self, run_dir: str | Path) -> Path | None:
        """When the split was made in memory: write its members to `run_dir/splits/<split>.txt` (one JSON string per
        line, after a comment line) and return that path; None when the dataset states the split itself."""
        if self.made_split is None:
            return None
        path = Path(run_dir) / "splits" / f"{self.split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# the '{self.split}' split made in memory ({len(self.made_split)} images; not stated by the "
                  "dataset): one JSON string per line, the image path relative to the dataset folder\n")
        path.write_text(header + "".join(json.dumps(name, ensure_ascii=False) + "\n" for name in self.made_split),
                        encoding="utf-8")
        return path

    def training_targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 [N, 4], labels int64 [N]) of record i used as training targets (difficult left out
        unless keep_difficult)."""
        record = self.records[i]
        keep = slice(None) if self.keep_difficult else ~record.difficult
        return record.boxes[keep], record.labels[keep]


def read_split_file(path: str | Path) -> list[str]:
    """The members of a splits/<split>.txt that DatasetIndex.write_split wrote (comment lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------------------- checking
def _contained_image(entry: Entry) -> Path:
    """The entry's image, resolved inside its folder (COCO: the json's image folder; VOC: JPEGImages/; YOLO: the
    dataset root), else UnsafePathError: a file_name leading elsewhere, a link out of the folder, a FIFO or device."""
    if entry.relative is not None and entry.root is not None:
        return resolve_inside(entry.root, entry.relative, entry.field)
    return resolve_inside(entry.image.parent, entry.image.name, f"{entry.annotation}: its image")


def _check_entry(entry: Entry, classes: ClassMap) -> tuple[ImageRecord, list[str]]:
    """Turn an entry into a record; returns (record, notes of what was fixed). Raises ImageReadError/AnnotationError
    (UnsafePathError for an image path that leaves its folder)."""
    if isinstance(entry.raw, AnnotationError):
        raise entry.raw
    if entry.image is None:
        raise ImageReadError(f"{entry.annotation}: its image is missing (no file with this stem in the image "
                             "folder); add the image or remove the annotation")
    height, width, image_notes = probe_image(_contained_image(entry))
    objects = entry.raw.objects(height, width, image_notes, classes, entry.image)
    record = ImageRecord(entry.image, entry.image.stem, objects.boxes, objects.labels, objects.difficult, width,
                         height, entry.coco_id, objects.truth)
    return record, objects.notes


def _unreadable_record(entry: Entry, error: ImageReadError, classes: ClassMap) -> tuple[ImageRecord, str]:
    """An evaluation record for an image that cannot be read: no training targets, its annotated objects as truth
    (in pixels of the size the annotation or the image header states, when any does). Returns (record, problem
    line)."""
    raw: RawAnnotation = entry.raw
    declared = raw.size or (image_size(entry.image) if entry.image is not None else None)
    _, truth = classes.known(raw.in_pixels(*declared) if declared else raw)
    height, width = declared or (0, 0)
    path = entry.image or entry.annotation  # a missing image has no path; name the annotation
    empty = np.zeros((0, 4), np.float32)
    record = ImageRecord(path, path.stem, empty, np.zeros(0, np.int64), np.zeros(0, bool), width, height,
                         entry.coco_id, truth, image_error=str(error))
    notes = f"; annotation: {'; '.join(raw.notes)}" if raw.notes else ""
    return record, f"unreadable: {error} ({missed_objects(int((~truth.difficult).sum()))}){notes}"


def shared_images(first: DatasetIndex, second: DatasetIndex) -> list[Path]:
    """Image files that are in both indexes (resolved paths), sorted: a split leak unless asked for."""
    def files(index: DatasetIndex) -> set[Path]:
        return {record.path.resolve() for record in index.records}
    return sorted(files(first) & files(second))


def missed_objects(count: int, images: int = 1) -> str:
    """'its 2 objects count as missed', 'its 1 object counts as missed', 'their 5 objects count as missed'."""
    owner = "its" if images == 1 else "their"
    return f"{owner} {count} object{'s' * (count != 1)} count{'s' * (count == 1)} as missed"


def _add_notes(index: DatasetIndex, entry: Entry, record: ImageRecord, notes: list[str]) -> None:
    """The problem line(s) of a fixed entry: one line per file naming both files (a note may be about the image or
    the annotation), or the notes themselves when the format writes full lines (YOLO: file:line)."""
    index.fixed += 1
    if entry.raw.LINE_NOTES:
        index.problems.extend(f"fixed: {note}" for note in notes)
    elif entry.coco_id is not None:
        index.problems.append(f"fixed: {record.path}: " + "; ".join(notes))
    else:
        index.problems.append(f"fixed: {entry.annotation}: " + "; ".join(notes) + f" (image {record.path.name})")


def _build_index(entries: list[Entry], classes: list[str], split: str, problems: list[str], keep_difficult: bool,
                 keep_empty: bool, keep_unreadable: bool = False) -> DatasetIndex:
    index = DatasetIndex([], list(classes), problems, split, keep_difficult=keep_difficult)
    class_map = ClassMap(index.classes)
    for entry in entries:
        try:
            record, notes = _check_entry(entry, class_map)
        except ImageReadError as err:
            if keep_unreadable:
                record, line = _unreadable_record(entry, err, class_map)
                problems.append(line)
                index.records.append(record)
            else:
                problems.append(f"skipped: {err}")
            continue
        except AnnotationError as err:
            problems.append(f"skipped: {err}")
            continue
        except UnsafePathError as err:  # not an image of this dataset: neither trained on nor scored (README)
            problems.append(f"skipped (unsafe path): {err}")
            index.refused += 1
            continue
        if notes:
            _add_notes(index, entry, record, notes)
        if len(record.boxes) == 0:
            if not keep_empty:
                continue
            index.background += 1
        index.records.append(record)
    index.skipped = sum(line.startswith("skipped") for line in problems)
    index.unknown_objects = dict(class_map.unknown)
    return index


def _discover(entries: list[Entry]) -> list[str]:
    return sorted({name for e in entries if isinstance(e.raw, RawAnnotation) for name in e.raw.names})


def _members(source: SourceSplit) -> list[str]:
    """The split's images as paths relative to the dataset folder (its annotation where the image is missing)."""
    root = os.path.abspath(source.root)
    return [Path(os.path.relpath(os.path.abspath(entry.image or entry.annotation), root)).as_posix()
            for entry in source.entries]


def _refuse_unfinished(data: Path) -> None:
    """DatasetError when `data` lies in a folder that utils.convert has not finished writing (killed, or still
    running): a half-written dataset must never be trained on silently."""
    folders = [data] if data.is_dir() else []
    folders += [data.parent, data.parent.parent]
    for folder in folders:
        if (folder / UNFINISHED_MARKER).exists():
            raise DatasetError(f"{folder}: a conversion into this folder (python -m utils.convert) did not finish; "
                               "re-run the same command to finish it, or delete the folder")


class EmptySplitError(DatasetError):
    """The split holds no image at all (e.g. the val split of a 1-image dataset made on the fly)."""


def load_split(data: str | Path, split: str, classes: list[str] | None = None, keep_difficult: bool = False,
               keep_empty: bool = True, seed: int = 0, keep_unreadable: bool = False) -> DatasetIndex:
    """Index one split of a dataset. `data`: anything a registered format recognises (DATA_HELP: a VOCdevkit or one
    VOC<year> folder, an images/ + annotations/ folder pair, a COCO instances json or a folder with
    annotations/instances_<split>2017.json, a YOLO data.yaml or images/ + labels/ folder).

    split: train, val, trainval, test, or all (every annotated image). classes=None discovers them (sorted names for
    VOC XML, category-id order for COCO, `names` for YOLO). Every problem is logged once and listed in the index's
    `problems`. A split the dataset does not state is made in memory with `seed` (DatasetIndex.write_split records
    it). keep_unreadable: keep images that cannot be read (missing, empty, undecodable) as records with `image_error`
    set, so that evaluation counts their objects as missed; otherwise (training) they are skipped.
    """
    data = check_user_path(data, "--data", folder_ok=True)
    if not data.exists():
        raise MissingFileError(f"dataset {data} does not exist; pass --data a dataset of one of the formats "
                               f"{', '.join(FORMATS)} (see train.py --help)")
    if split not in SPLITS + ("all",):
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS + ('all',))}")
    _refuse_unfinished(data)
    name, reader = detect_format(data)
    source = reader.read(data, split, classes, seed)
    problems = list(source.problems)
    found = source.classes if source.classes is not None else _discover(source.entries)
    if len(classes or found) > MAX_CLASSES:  # each class widens the model's heads: refused before anything is built
        raise DatasetError(f"{data}: {len(classes or found)} class names, more than the {MAX_CLASSES} a model here "
                           "can have; check the annotations' class names, or give --names FILE")
    index = _build_index(source.entries, classes or found, split, problems, keep_difficult, keep_empty,
                         keep_unreadable)
    index.coco_json, index.pixel_offset, index.source_format = source.coco_json, reader.pixel_offset, name
    index.made_split = _members(source) if source.made else None
    for line in problems:
        LOGGER.warning("%s", line)
    if not source.entries:
        raise EmptySplitError(f"{data}: split '{split}' has no usable images (it holds none); use another split, or "
                              "add images")
    if not index.records:
        raise DatasetError(f"{data}: split '{split}' has no usable images ({index.summary()}); check the paths and "
                           "the problems logged above")
    LOGGER.info("%s %s (%s): %s", data, split, name, index.summary())
    return index
