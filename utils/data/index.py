"""Dataset indexing: VOCdevkit, a plain images/ + annotations/ folder pair, or COCO json -> `DatasetIndex`.

Where data enters the project. `load_split` reads every annotation, checks every image header, and turns each problem
into one line naming the file (logged and kept in `DatasetIndex.problems`): nothing crashes, nothing is dropped
silently. Boxes are (x1, y1, x2, y2) in the stored pixel grid of the image (EXIF orientation ignored, see
utils/image_io.py).

Two views of each image's objects:
- `boxes/labels/difficult`: the training targets, cleaned (clipped to the image, zero-area and exact duplicates
  dropped); `difficult` flags VOC difficult=1 and COCO iscrowd, left out of training unless `keep_difficult`.
- `truth`: the ground truth that evaluation scores, every known-class object exactly as the annotation file states it
  (nothing clipped or dropped, difficult flagged), as the VOC devkit and pycocotools read the raw files.
With `keep_unreadable=True` (evaluation) an image that cannot be read stays in the split with `image_error` set, so its
objects count as missed instead of leaving the denominator.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from utils.common.boxes import GroundTruthBoxes
from utils.common.errors import DatasetError, MissingFileError
from utils.common.image_io import IMAGE_SUFFIXES, ImageReadError, image_size, probe_image
from utils.common.paths import UnsafePathError, check_user_path, resolve_inside
from utils.data.annotations import AnnotationError, RawAnnotation, parse_coco_json, parse_voc_xml
from utils.data.formats.yolo import YoloLabels, YoloSource, is_yolo_source, label_path, parse_label_file, read_source

LOGGER = logging.getLogger(__name__)
SPLITS = ("train", "val", "trainval", "test")
TEST_FRACTION = 0.1  # generated splits: 10% test, then 10% of trainval as val (the usual VOC-style 90/10 twice)
VAL_FRACTION = 0.1
DATA_HELP = ("VOCdevkit folder, images/+annotations/ folder, COCO json, YOLO data.yaml or YOLO images/+labels/ "
             "folder")


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
    """The records of one split, the class list, and every problem met while reading it (one line per file)."""

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
    pixel_offset: float | None = None  # IoU convention of its boxes (utils.eval.evaluation.iou_pixel_offset when None)

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

    def training_targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 [N, 4], labels int64 [N]) of record i used as training targets (difficult left out
        unless keep_difficult)."""
        record = self.records[i]
        keep = slice(None) if self.keep_difficult else ~record.difficult
        return record.boxes[keep], record.labels[keep]


@dataclass
class _Entry:
    """One image/annotation pair found in the source, before checking."""

    image: Path | None
    annotation: Path
    raw: RawAnnotation | AnnotationError
    coco_id: int | None = None
    relative: str | None = None  # COCO: file_name as written, resolved inside `root` (the image folder) when checked
    root: Path | None = None
    field: str = ""  # where the path is written ("<json>: image id 7 file_name"), for refusals
    line_notes: bool = False  # notes are full problem lines (YOLO labels: file:line), one problem line each


# ---------------------------------------------------------------------------------------------------------- splits
def make_splits(ids: list[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic split of ids: 10% test, the rest trainval, of which 10% val. Each list sorted.

    Tiny datasets still get usable splits: from 2 images on, val holds at least one image, from 3 on test too, and
    train always keeps at least one (1 image: train only; training then validates on it, with a warning)."""
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    n_test = int(round(len(order) * TEST_FRACTION)) or int(len(order) >= 3)
    test, trainval = order[:n_test], order[n_test:]
    n_val = int(round(len(trainval) * VAL_FRACTION)) or int(len(trainval) >= 2)
    val, train = trainval[:n_val], trainval[n_val:]
    return {"train": sorted(train), "val": sorted(val), "trainval": sorted(trainval), "test": sorted(test)}


def _select(ids: list[str], split: str, seed: int) -> list[str]:
    return sorted(ids) if split == "all" else make_splits(ids, seed)[split]


def _read_id_file(path: Path) -> list[str]:
    # class-specific VOC lists read "000005 -1"; the id is the first token
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_splits(main: Path, splits: dict[str, list[str]], seed: int) -> None:
    """Write generated splits into ImageSets/Main, or keep them in memory (and say so) when that is not possible."""
    try:
        main.mkdir(parents=True, exist_ok=True)
        for name, ids in splits.items():
            (main / f"{name}.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    except OSError as err:
        LOGGER.warning("%s: no split files and cannot write them (%s); using a seed-%d split kept in memory "
                       "(deterministic, so train and val still do not overlap)", main, err.strerror or err, seed)
        return
    LOGGER.warning("%s: no split files; wrote a seed-%d split (%d train, %d val, %d test; trainval = train + val)",
                   main, seed, len(splits["train"]), len(splits["val"]), len(splits["test"]))


def _split_file(year: Path, split: str) -> str:
    path = year / "ImageSets" / "Main" / f"{split}.txt"
    return str(path) if path.is_file() else f"{year} ({split} split)"


def _voc_split_ids(year: Path, split: str, seed: int) -> list[str] | None:
    """Ids of `split` in one VOC<year> folder; None when the year has split files but not this one."""
    main = year / "ImageSets" / "Main"
    all_ids = sorted(p.stem for p in (year / "Annotations").glob("*.xml"))
    if split == "all":
        return all_ids
    if (main / f"{split}.txt").is_file():
        return _read_id_file(check_user_path(main / f"{split}.txt", "split file"))
    if any((main / f"{name}.txt").is_file() for name in SPLITS):
        LOGGER.info("%s has no ImageSets/Main/%s.txt; it contributes no images to '%s'", year, split, split)
        return None
    splits = make_splits(all_ids, seed)
    _write_splits(main, splits, seed)
    return splits[split]


# ---------------------------------------------------------------------------------------------------------- sources
def _image_lookup(folder: Path) -> dict[str, Path]:
    """{stem: image path} of a folder, preferring .jpg when a stem exists with several suffixes."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir(), key=lambda p: p.suffix.lower() != ".jpg"):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(path.stem, path)
    return found


def _parse(path: Path) -> RawAnnotation | AnnotationError:
    try:
        return parse_voc_xml(path)
    except AnnotationError as err:
        return err


def _xml_entries(ids: list[str], xml_dir: Path, images: dict[str, Path], problems: list[str],
                 listed_in: str = "the split") -> list[_Entry]:
    entries = []
    for image_id in ids:
        try:  # ids come from split files: "../../x" or "/etc/x" must not lead outside Annotations/
            xml = resolve_inside(xml_dir, f"{image_id}.xml", f"{listed_in}: id {image_id!r}")
        except UnsafePathError as err:
            problems.append(f"skipped (unsafe path): {err}")
            continue
        if not xml.is_file():
            problems.append(f"skipped: {xml}: annotation listed in the split but missing; add it or remove the id")
            continue
        entries.append(_Entry(images.get(image_id), xml, _parse(xml)))
    return entries


def _orphans(images: dict[str, Path], xml_dir: Path, problems: list[str]) -> None:
    for stem, path in images.items():
        if not (xml_dir / f"{stem}.xml").is_file():
            problems.append(f"skipped: {path}: image has no annotation {xml_dir / (stem + '.xml')}; add one "
                            "(an XML without objects makes it a background image)")


def _voc_entries(root: Path, split: str, seed: int, problems: list[str]) -> list[_Entry]:
    years = [root] if (root / "Annotations").is_dir() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "Annotations").is_dir())
    if not years:
        raise DatasetError(f"{root}: no VOC<year>/Annotations folder inside; expected a VOCdevkit layout")
    entries = []
    for year in years:
        ids = _voc_split_ids(year, split, seed)
        if ids is not None:
            images = _image_lookup(year / "JPEGImages")
            entries += _xml_entries(ids, year / "Annotations", images, problems, _split_file(year, split))
            if split == "all":
                _orphans(images, year / "Annotations", problems)
    return entries


def _folder_entries(root: Path, split: str, seed: int, problems: list[str]) -> list[_Entry]:
    xml_dir, images = root / "annotations", _image_lookup(root / "images")
    ids = _select([p.stem for p in xml_dir.glob("*.xml")], split, seed)
    if split != "all":
        LOGGER.info("%s has no split files; using the seed-%d '%s' split made in memory", root, seed, split)
    _orphans(images, xml_dir, problems)
    return _xml_entries(ids, xml_dir, images, problems)


_COCO_SPLIT_FILE = re.compile(r"instances_(train|val|test)(\d*)\.json")


def _coco_siblings(json_path: Path) -> dict[str, Path]:
    """{split: instances_<split><year>.json} beside `json_path` with the same year, `json_path` included; empty when
    its name is not instances_<train|val|test><year>.json."""
    match = _COCO_SPLIT_FILE.fullmatch(json_path.name)
    if match is None:
        return {}
    return {split: json_path.with_name(f"instances_{split}{match[2]}.json") for split in ("train", "val", "test")
            if json_path.with_name(f"instances_{split}{match[2]}.json").is_file()}


def _coco_json_split(json_path: Path, split: str, seed: int) -> tuple[Path, str]:
    """(the json holding `split`, the part of it to use: "all", or a split to make with `seed`).

    A COCO json holds one split. Given instances_train2017.json, split 'val' is read from its sibling
    instances_val2017.json; a json without siblings is split in memory (seeded, as a VOC folder without split files),
    so that train, val and test never share an image."""
    siblings = _coco_siblings(json_path)
    if split == "all":
        return json_path, "all"
    if split in siblings:
        return siblings[split], "all"
    if len(siblings) > 1:
        raise DatasetError(f"{json_path}: no instances_{split}*.json beside it (found "
                           f"{', '.join(p.name for p in siblings.values())}); choose one of those splits "
                           "(e.g. --train-split train --val-split val), or 'all' to use one file whole")
    LOGGER.info("%s is the only COCO json of its dataset: using the seed-%d '%s' split of its images made in memory "
                "(train, val and test never share an image)", json_path, seed, split)
    return json_path, split


def _coco_json_for(root: Path, split: str) -> Path | None:
    if root.is_file() and root.suffix == ".json":
        return root
    for name in (f"instances_{split}2017.json", f"instances_{split}.json"):
        if (root / "annotations" / name).is_file():
            return root / "annotations" / name
    return None


def _coco_image_dir(json_path: Path) -> Path:
    """The image folder of instances_<name>.json: <root>/<name>, beside the json, or an images/ folder."""
    name = json_path.stem.removeprefix("instances_")
    candidates = [json_path.parent.parent / name, json_path.parent / name, json_path.parent.parent / "images" / name,
                  json_path.parent / "images", json_path.parent.parent / "images"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise MissingFileError(f"{json_path}: no image folder found (looked for {', '.join(map(str, candidates[:3]))}); "
                           "put the images beside the annotations as in COCO (train2017/, val2017/)")


def _coco_entries(json_path: Path, problems: list[str], split: str = "all", seed: int = 0
                  ) -> tuple[list[_Entry], list[str]]:
    """Entries of a COCO json (all its images, or the seeded `split` of them when the json is the only one of its
    dataset) and its category names in id order (contiguous index = position). file_name is untrusted: it is kept
    as written here and resolved inside the image folder when the entry is checked."""
    images, categories = parse_coco_json(json_path, problems)
    if split != "all":
        chosen = set(_select([str(image.coco_id) for image in images], split, seed))
        images = [image for image in images if str(image.coco_id) in chosen]
    folder = _coco_image_dir(json_path)
    entries = [_Entry(folder / image.file_name, json_path, image.annotation, image.coco_id, image.file_name, folder,
                      f"{json_path}: image id {image.coco_id} file_name") for image in images]
    return entries, list(categories.values())


# ---------------------------------------------------------------------------------------------------------- checking
def _box_notes(boxes: np.ndarray, height: int, width: int, notes: list[str]) -> np.ndarray:
    """Clip boxes to the image; return the mask of boxes kept (positive area after clipping). Notes what changed."""
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    outside = ~inverted & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    changed = ~inverted & ~outside & np.any(clipped != boxes, axis=1)
    if inverted.any():
        notes.append(f"{int(inverted.sum())} box(es) with zero or negative area (dropped)")
    if outside.any():
        notes.append(f"{int(outside.sum())} box(es) entirely outside the {width}x{height} image (dropped)")
    if changed.any():
        notes.append(f"{int(changed.sum())} box(es) reaching outside the image (clipped)")
    boxes[:] = clipped
    return ~inverted & ~outside


def _duplicates(boxes: np.ndarray, labels: np.ndarray, keep: np.ndarray, notes: list[str]) -> np.ndarray:
    """Mask of kept objects that repeat an earlier kept object exactly (same class and box). A duplicate would count
    one object twice: evaluation could never match both, and training would weight it double."""
    rows = np.concatenate([labels[:, None].astype(np.float32), boxes], axis=1)
    duplicate = keep.copy()
    duplicate[np.flatnonzero(keep)[np.unique(rows[keep], axis=0, return_index=True)[1]]] = False
    if duplicate.any():
        notes.append(f"{int(duplicate.sum())} duplicated object(s) with the same class and box (dropped)")
    return duplicate


def _known_objects(raw: RawAnnotation, class_index: dict[str, int], unknown: Counter,
                   notes: list[str]) -> tuple[np.ndarray, GroundTruthBoxes]:
    """(mask of known-class objects, their ground truth as written); objects of other classes are counted."""
    known = np.array([name in class_index for name in raw.names], dtype=np.bool_)
    if not known.all():
        missing = Counter(name for name in raw.names if name not in class_index)
        unknown.update(missing)
        notes.append("objects of classes not in the class list (not used): "
                     + ", ".join(f"{name} x{count}" for name, count in sorted(missing.items())))
    labels = np.array([class_index[n] for n in raw.names if n in class_index], dtype=np.int64)
    return known, GroundTruthBoxes(raw.boxes[known], labels, raw.difficult[known])


def _check_entry(entry: _Entry, class_index: dict[str, int], unknown: Counter) -> tuple[ImageRecord, list[str]]:
    """Turn an entry into a record; returns (record, notes of what was fixed). Raises ImageReadError/AnnotationError."""
    if isinstance(entry.raw, AnnotationError):
        raise entry.raw
    if entry.image is None:
        raise ImageReadError(f"{entry.annotation}: its image is missing (no file with this stem in the image "
                             "folder); add the image or remove the annotation")
    image = _contained_image(entry)
    height, width, notes = probe_image(image)
    raw = entry.raw
    notes = raw.notes + notes
    if raw.size is not None and raw.size != (height, width):
        notes.append(f"annotation says {raw.size[1]}x{raw.size[0]} but the image is {width}x{height} "
                     "(used the image size; boxes kept as written)")
    known, truth = _known_objects(raw, class_index, unknown, notes)
    boxes = raw.boxes[known].astype(np.float32, copy=True)
    labels = truth.labels
    keep = _box_notes(boxes, height, width, notes)
    keep &= ~_duplicates(boxes, labels, keep, notes)
    record = ImageRecord(entry.image, entry.image.stem, boxes[keep], labels[keep], raw.difficult[known][keep],
                         width, height, entry.coco_id, truth)
    return record, notes


def _contained_image(entry: _Entry) -> Path:
    """The entry's image, resolved inside its folder (COCO: the json's image folder; VOC: JPEGImages/), else
    UnsafePathError: a file_name leading elsewhere, a link out of the folder, a FIFO or device file."""
    if entry.relative is not None:
        return resolve_inside(entry.root, entry.relative, entry.field)
    return resolve_inside(entry.image.parent, entry.image.name, f"{entry.annotation}: its image")


def _unreadable_record(entry: _Entry, error: ImageReadError, class_index: dict[str, int],
                       unknown: Counter) -> tuple[ImageRecord, str]:
    """An evaluation record for an image that cannot be read: no training targets, its annotated objects as truth.
    Returns (record, problem line)."""
    raw = entry.raw
    _, truth = _known_objects(raw, class_index, unknown, [])
    height, width = raw.size or (0, 0)
    path = entry.image or entry.annotation  # a missing image has no path; name the annotation
    empty = np.zeros((0, 4), np.float32)
    record = ImageRecord(path, path.stem, empty, np.zeros(0, np.int64), np.zeros(0, bool), width, height,
                         entry.coco_id, truth, image_error=str(error))
    notes = f"; annotation: {'; '.join(raw.notes)}" if raw.notes else ""
    return record, f"unreadable: {error} ({missed_objects(int((~truth.difficult).sum()))}){notes}"


def _pixel_entry(entry: _Entry) -> _Entry:
    """The entry with its YOLO rows in pixels, for an image that cannot be decoded: scaled by the size its header
    declares (a bomb, a cut file), else left normalised (a missing or empty file: the size is unknown; the objects
    still count as missed, only their COCO area bucket is then 'small')."""
    raw = entry.raw
    if not isinstance(raw, YoloLabels):
        return entry
    height, width = (entry.image and image_size(entry.image)) or (1, 1)
    scale = np.array([width, height, width, height], np.float64)
    size = (height, width) if (height, width) != (1, 1) else None
    pixels = RawAnnotation(raw.names, raw.boxes * scale, raw.difficult, size, list(raw.notes))
    return replace(entry, raw=pixels)


def _check_yolo_entry(entry: _Entry, class_index: dict[str, int],
                      unknown: Counter) -> tuple[ImageRecord, list[str]]:
    """_check_entry for a YOLO label file: rows scaled to the real image size. Truth = every known-class row as
    written; training targets = the usable rows, clipped (utils.data.formats.yolo notes each bad row with its line)."""
    height, width, image_notes = probe_image(entry.image)
    raw: YoloLabels = entry.raw
    notes = list(raw.notes) + [f"{entry.image}: {note}" for note in image_notes]
    scale = np.array([width, height, width, height], np.float64)
    pixels = RawAnnotation(raw.names, raw.boxes * scale, raw.difficult, (height, width))
    class_notes: list[str] = []
    known, truth = _known_objects(pixels, class_index, unknown, class_notes)
    if any(not name.startswith("class id ") for name in raw.names if name not in class_index):
        notes += [f"{entry.annotation}: {note}" for note in class_notes]  # ids outside names are noted per line
    keep = raw.train_keep[known]
    boxes = (raw.train_boxes[known][keep] * scale).astype(np.float32)
    record = ImageRecord(entry.image, entry.image.stem, boxes, truth.labels[keep], truth.difficult[keep], width,
                         height, None, truth)
    return record, notes


def shared_images(first: DatasetIndex, second: DatasetIndex) -> list[Path]:
    """Image files that are in both indexes (resolved paths), sorted: a split leak unless asked for."""
    def files(index: DatasetIndex) -> set[Path]:
        return {record.path.resolve() for record in index.records}
    return sorted(files(first) & files(second))


def missed_objects(count: int, images: int = 1) -> str:
    """'its 2 objects count as missed', 'its 1 object counts as missed', 'their 5 objects count as missed'."""
    owner = "its" if images == 1 else "their"
    return f"{owner} {count} object{'s' * (count != 1)} count{'s' * (count == 1)} as missed"


def _build_index(entries: list[_Entry], classes: list[str], split: str, problems: list[str],
                 keep_difficult: bool, keep_empty: bool, keep_unreadable: bool = False) -> DatasetIndex:
    index = DatasetIndex([], list(classes), problems, split, keep_difficult=keep_difficult)
    class_index = {name: i for i, name in enumerate(classes)}
    unknown: Counter = Counter()
    for entry in entries:
        try:
            check = _check_yolo_entry if isinstance(entry.raw, YoloLabels) else _check_entry
            record, notes = check(entry, class_index, unknown)
        except ImageReadError as err:
            if keep_unreadable:
                record, line = _unreadable_record(_pixel_entry(entry), err, class_index, unknown)
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
        if notes and entry.line_notes:
            index.fixed += 1
            problems.extend(f"fixed: {note}" for note in notes)
        elif notes:
            index.fixed += 1
            # name both files: a note may be about the image (16-bit, CMYK) or the annotation (boxes, size)
            if entry.coco_id is not None:
                problems.append(f"fixed: {record.path}: " + "; ".join(notes))
            else:
                problems.append(f"fixed: {entry.annotation}: " + "; ".join(notes) + f" (image {record.path.name})")
        if len(record.boxes) == 0:
            if not keep_empty:
                continue
            index.background += 1
        index.records.append(record)
    index.skipped = sum(line.startswith("skipped") for line in problems)
    index.unknown_objects = dict(unknown)
    return index


def _discover(entries: list[_Entry]) -> list[str]:
    return sorted({name for e in entries if isinstance(e.raw, RawAnnotation) for name in e.raw.names})


def _xml_source_entries(data: Path, split: str, seed: int, problems: list[str]) -> list[_Entry]:
    if (data / "annotations").is_dir() and (data / "images").is_dir():
        return _folder_entries(data, split, seed, problems)
    return _voc_entries(data, split, seed, problems)


def _yolo_split_images(source: YoloSource, split: str, seed: int) -> list[Path]:
    """The images of `split`: as the yaml/folder states them (trainval = train + val, all = every image); splits it
    does not state are made from its train images (or all of them) as for VOC folders, seeded, in memory."""
    stated = source.splits
    if split == "all":
        return sorted({p for images in stated.values() for p in images})
    if split == "trainval" and "train" in stated and "val" in stated:
        return stated["train"] + stated["val"]
    if split in stated:
        return stated[split]
    if split == "test" and "val" in stated:
        raise DatasetError(f"{source.origin}: no 'test' split; add a 'test' entry or evaluate another split "
                           "(--split val)")
    pool = stated.get("all", stated.get("train", []))
    by_id = {str(p.relative_to(source.root) if p.is_relative_to(source.root) else p): p for p in pool}
    LOGGER.info("%s states no '%s' split; using the seed-%d '%s' split of its %d images made in memory",
                source.origin, split, seed, split, len(by_id))
    return [by_id[i] for i in make_splits(list(by_id), seed)[split]]


def _yolo_entries(data: Path, split: str, classes: list[str] | None, seed: int,
                  problems: list[str]) -> tuple[list[_Entry], list[str]]:
    """Entries and class names of a YOLO dataset (utils/yolo_format.py). Class ids map to the dataset's names; a
    dataset without names takes the caller's list by id, else its ids become the names ('0', '1', ...)."""
    source = read_source(data)
    problems += source.problems
    names = source.names or classes
    entries = []
    for image in _yolo_split_images(source, split, seed):
        label = label_path(image)
        try:
            raw = parse_label_file(label, names, source.root)
        except AnnotationError as err:
            raw = err
        entries.append(_Entry(image, label, raw, line_notes=True))
    if names is None:
        ids = [int(k) for e in entries if isinstance(e.raw, YoloLabels) for k in e.raw.class_ids]
        names = [str(i) for i in range(max(ids, default=0) + 1)]
    return entries, names


class EmptySplitError(DatasetError):
    """The split holds no image at all (e.g. the val split of a 1-image dataset made on the fly)."""


def load_split(data: str | Path, split: str, classes: list[str] | None = None, keep_difficult: bool = False,
               keep_empty: bool = True, seed: int = 0, keep_unreadable: bool = False) -> DatasetIndex:
    """Index one split of a dataset. `data`: a VOCdevkit (or one VOC<year>) folder, an images/ + annotations/
    folder pair, a COCO instances json, or a folder with annotations/instances_<split>2017.json.

    split: train, val, trainval, test, or all (every annotated image). classes=None discovers them (sorted names for
    VOC XML, category-id order for COCO). Every problem is logged once and listed in the index's `problems`.
    keep_unreadable: keep images that cannot be read (missing, empty, undecodable) as records with `image_error`
    set, so that evaluation counts their objects as missed; otherwise (training) they are skipped.
    """
    data = check_user_path(data, "--data", folder_ok=True)
    if not data.exists():
        raise MissingFileError(f"dataset {data} does not exist; pass --data a VOCdevkit folder, an images/ + "
                               "annotations/ folder pair or a COCO instances json")
    if split not in SPLITS + ("all",):
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS + ('all',))}")
    problems: list[str] = []
    json_path = None if is_yolo_source(data) else _coco_json_for(data, split)
    if json_path is None and is_yolo_source(data):
        entries, found = _yolo_entries(data, split, classes, seed, problems)
    elif json_path is not None:
        part = "all"
        if data.is_file():
            json_path, part = _coco_json_split(json_path, split, seed)
        entries, found = _coco_entries(json_path, problems, part, seed)
    else:
        entries = _xml_source_entries(data, split, seed, problems)
        found = _discover(entries)
    index = _build_index(entries, classes or found, split, problems, keep_difficult, keep_empty, keep_unreadable)
    index.coco_json = json_path
    if entries and isinstance(entries[0].raw, (YoloLabels, AnnotationError)) and entries[0].line_notes:
        index.pixel_offset = 0.0  # YOLO rows are continuous normalised coordinates (as COCO's): no +1 pixel IoU
    for line in problems:
        LOGGER.warning("%s", line)
    if not entries:
        raise EmptySplitError(f"{data}: split '{split}' has no usable images (it holds none); use another split, or "
                              "add images")
    if not index.records:
        raise DatasetError(f"{data}: split '{split}' has no usable images ({index.summary()}); check the paths and "
                           "the problems logged above")
    LOGGER.info("%s %s: %s", data, split, index.summary())
    return index
