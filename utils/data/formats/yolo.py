"""YOLO-format datasets: an Ultralytics `data.yaml`, or a folder with images/ + labels/ (one .txt per image).

Layout rules (those of Ultralytics, so that what LabelImg, CVAT, Roboflow or Label Studio export loads as it is):
- data.yaml: `path` (the dataset root; absent: the yaml's folder; relative: against the yaml's folder, else the
  current folder), `train`, `val`, optional `test`: each a folder of images (searched recursively), a .txt list of
  image paths, or a list of either, relative to the root. An entry written `../x` that does not exist inside the root
  is read as `x` (Roboflow's exports). `names`: a list, or an {id: name} dict; `nc` optional (checked). The yaml is
  read with utils.common.safe_load.load_yaml (size, alias expansion and depth bounded).
- A folder: its data.yaml when it has one; else images/{train,val,test} (or valid) sub-folders as splits; else
  images/ flat, split in memory as every format's unstated splits are (utils.data.reader.split_ids). Class
  names from classes.txt (the folder's or labels/, LabelImg's) else the caller's list, else the class ids as names.
- The label of `.../images/.../a.jpg` is `.../labels/.../a.txt` (the last `images` folder becomes `labels`); a
  missing or empty label file is a background image.
- Paths from inside the data (yaml entries, list-file lines, symlinks) must stay inside the dataset root
  (utils.common.paths.resolve_inside); a path that leads out is a problem line, never opened. Image folders are
  walked without entering a folder twice (utils.common.paths.walk_files: a link loop ends).

Each label row is `class xc yc w h`, normalised to [0, 1]. Every bad row is a problem line naming the file and line
number (the first MAX_NOTES_SHOWN of a file; the others are counted in one more line): non-numeric or non-finite
values (nan, inf, 1e999), a wrong column count, coordinates outside [0, 1] (clipped for training), zero area, a class
id outside `names`, a repeated row (dropped for training). A file of more than MAX_OBJECTS rows is refused.
Segmentation rows (class + 3 or more x y points) become their bounding box, with a note. Evaluation scores the rows
as written (ImageRecord.truth, converted to pixels of the real image size); IoU treats them as continuous
coordinates (no +1 pixel, as COCO).
"""
from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.common.errors import ConfigError, DatasetError, MissingFileError, UserError
from utils.common.image_io import IMAGE_SUFFIXES
from utils.common.paths import resolve_inside, walk_files
from utils.common.safe_load import load_yaml
from utils.data.annotations import (
    MAX_CLASSES,
    MAX_OBJECTS,
    AnnotationError,
    ClassMap,
    Notes,
    Objects,
    RawAnnotation,
    read_bounded,
    too_many_objects,
    whole_number,
)
from utils.data.reader import FORMATS, DatasetReader, Entry, SourceSplit, read_list_text, split_ids

LOGGER = logging.getLogger("utils.data.index")
YAML_SUFFIXES = (".yaml", ".yml")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class YoloSource:
    """A YOLO dataset as described by its yaml or folder: root, class names (None: not stated) and the image list
    of each split it states (train/val/test; the others are generated)."""

    root: Path
    names: list[str] | None
    splits: dict[str, list[Path]]
    origin: Path
    problems: list[str] = field(default_factory=list)


@dataclass
class YoloLabels(RawAnnotation):
    """A label file read: `boxes` are the rows as written (normalised xc,yc,w,h turned into x1,y1,x2,y2, scaled to
    pixels once the image size is known); `train_boxes` the same clipped to [0, 1] and `train_keep` the rows used
    for training (zero-area, outside and repeated rows dropped). `class_ids` the ids as written; `source` the file.
    Notes are full problem lines (file:line)."""

    train_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    train_keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: Path | None = None

    LINE_NOTES = True

    def in_pixels(self, height: int, width: int) -> RawAnnotation:
        scale = np.array([width, height, width, height], np.float64)
        return RawAnnotation(self.names, self.boxes * scale, self.difficult, (height, width), list(self.notes))

    def objects(self, height: int, width: int, image_notes: list[str], classes: ClassMap,
                image: Path | None = None) -> Objects:
        """Truth: every known-class row as written, in pixels; training targets: the usable rows, clipped (the bad
        rows were noted with their line numbers when the file was read)."""
        notes = list(self.notes) + [f"{image}: {note}" for note in image_notes]
        class_notes: list[str] = []
        known, truth = classes.known(self.in_pixels(height, width), class_notes)
        if any(not name.startswith("class id ") for name in self.names if name not in classes.index):
            notes += [f"{self.source}: {note}" for note in class_notes]  # ids outside names are noted per line
        keep = self.train_keep[known]
        scale = np.array([width, height, width, height], np.float64)
        boxes = (self.train_boxes[known][keep] * scale).astype(np.float32)
        return Objects(truth, boxes, truth.labels[keep], truth.difficult[keep], notes)


# ---------------------------------------------------------------------------------------------------------- reader
@FORMATS.register("yolo")
class YoloReader(DatasetReader):
    description = "a YOLO data.yaml, or a folder with images/ + labels/ (one .txt per image)"
    pixel_offset = 0.0  # normalised rows are continuous coordinates

    def detect(self, data: Path) -> bool:
        return is_yolo_source(data)

    def stated_splits(self, data: Path) -> list[str]:
        return [s for s in ("train", "val", "test") if s in read_source(data).splits]

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        """Entries and class names of a YOLO dataset. Class ids map to the dataset's names; a dataset without names
        takes the caller's list by id, else its ids become the names ('0', '1', ...)."""
        source = read_source(data)
        names = source.names or classes
        images, made = _split_images(source, split, seed)
        entries = []
        for image in images:
            label = label_path(image)
            try:
                raw: YoloLabels | AnnotationError = parse_label_file(label, names, source.root)
            except AnnotationError as err:
                raw = err
            relative = os.path.relpath(os.path.abspath(image), source.root)
            entries.append(Entry(image, label, raw, relative=relative, root=source.root, field=f"image {image}"))
        if names is None:
            ids = [int(k) for e in entries if isinstance(e.raw, YoloLabels) for k in e.raw.class_ids]
            names = [str(i) for i in range(max(ids, default=0) + 1)]
        return SourceSplit(entries, names, source.root, made, list(source.problems))


def is_yolo_source(data: Path) -> bool:
    """A data.yaml, or a folder holding a data.yaml or images/ + labels/ (and no VOC annotations/ folder)."""
    if data.is_file():
        return data.suffix.lower() in YAML_SUFFIXES
    return data.is_dir() and (_folder_yaml(data) is not None or (
        (data / "images").is_dir() and (data / "labels").is_dir() and not (data / "annotations").is_dir()))


def _split_images(source: YoloSource, split: str, seed: int) -> tuple[list[Path], bool]:
    """(the images of `split`, whether the split was made in memory): as the yaml/folder states them (trainval =
    train + val, all = every image); splits it does not state are made from its train images (or all of them)."""
    stated = source.splits
    if split == "all":
        return sorted({p for images in stated.values() for p in images}), False
    if split == "trainval" and "train" in stated and "val" in stated:
        return stated["train"] + stated["val"], False
    if split in stated:
        return stated[split], False
    if split == "test" and "val" in stated:
        raise DatasetError(f"{source.origin}: no 'test' split; add a 'test' entry or evaluate another split "
                           "(--split val)")
    pool = stated.get("all", stated.get("train", []))
    by_id = {str(p.relative_to(source.root) if p.is_relative_to(source.root) else p): p for p in pool}
    return [by_id[i] for i in split_ids(list(by_id), split, seed, source.origin)], True


# ---------------------------------------------------------------------------------------------------------- sources
def _folder_yaml(folder: Path) -> Path | None:
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_source(data: Path) -> YoloSource:
    """The YoloSource of a data.yaml or a YOLO folder."""
    if data.is_dir():
        found = _folder_yaml(data)
        return read_data_yaml(found) if found is not None else _read_folder(data)
    return read_data_yaml(data)


def read_data_yaml(path: Path) -> YoloSource:
    """Parse an Ultralytics data.yaml (utils.common.safe_load.load_yaml: bounded) into a YoloSource."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with path/train/val/names keys")
    root = _dataset_root(path, data.get("path"))
    names = _names(path, data.get("names"), data.get("nc"))
    if "train" not in data and "val" not in data:
        raise ConfigError(f"{path}: no 'train' or 'val' entry; name the image folders or list files")
    source = YoloSource(root, names, {}, path)
    for split in ("train", "val", "test"):
        if data.get(split):
            source.splits[split] = _images_of(data[split], root, f"{path}: '{split}'", source.problems)
    return source


def _dataset_root(yaml_path: Path, value: object) -> Path:
    """`path` of a data.yaml: absent -> the yaml's folder; relative -> against the yaml's folder (else the current
    folder, as Ultralytics resolves it). It is the user's choice of dataset folder, like --data: the entries below it
    are what must stay inside."""
    if value in (None, ""):
        return yaml_path.parent.resolve()
    if not isinstance(value, str):
        raise ConfigError(f"{yaml_path}: 'path' must be a folder path, got {type(value).__name__}")
    candidate = Path(value)
    if not candidate.is_absolute() and not (yaml_path.parent / candidate).is_dir() and candidate.is_dir():
        return candidate.resolve()
    root = (yaml_path.parent / candidate).resolve()
    if not root.is_dir():
        raise MissingFileError(f"{yaml_path}: dataset folder 'path: {value}' not found (looked in {root}); fix 'path'")
    return root


def _class_id(key: object) -> int | None:
    """A names key as a class id: a whole number or its digits ('3'); None otherwise (inf, 1.5, 'cat')."""
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return whole_number(key)


def _names(yaml_path: Path, names: object, count: object) -> list[str] | None:
    """names as a list, or an {id: name} dict with ids 0..n-1; checked against nc when both are given."""
    if isinstance(names, dict):
        by_id = {_class_id(k): str(v) for k, v in names.items()}
        if None in by_id:
            raise ConfigError(f"{yaml_path}: 'names' keys must be class ids (0, 1, ...)")
        if sorted(by_id) != list(range(len(by_id))):
            raise ConfigError(f"{yaml_path}: 'names' ids must be 0..{len(by_id) - 1} without gaps, got "
                              f"{sorted(by_id)[:10]}")
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is not None:
        raise ConfigError(f"{yaml_path}: 'names' must be a list or an {{id: name}} mapping")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{yaml_path}: 'nc' must be a positive whole number")
        if names is None:
            if count > MAX_CLASSES:
                raise ConfigError(f"{yaml_path}: nc: {count} is more than {MAX_CLASSES} classes; fix 'nc'")
            names = [str(i) for i in range(count)]
        elif len(names) != count:
            raise ConfigError(f"{yaml_path}: nc: {count} but 'names' holds {len(names)} names; make them agree")
    if names is not None and not names:
        raise ConfigError(f"{yaml_path}: 'names' is empty")
    return names


def _read_folder(folder: Path) -> YoloSource:
    images = folder / "images"
    source = YoloSource(folder.resolve(), _classes_txt(folder), {}, folder)
    for split, candidates in SPLIT_FOLDERS.items():
        found = next((images / c for c in candidates if (images / c).is_dir()), None)
        if found is not None:
            source.splits[split] = _images_of(str(found.relative_to(folder)), source.root, f"{folder}: {split}",
                                              source.problems)
    if not source.splits:
        source.splits["all"] = _images_of("images", source.root, str(folder), source.problems)
    return source


def _classes_txt(folder: Path) -> list[str] | None:
    for path in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if path.is_file():
            names = [line.strip() for line in read_list_text(path).splitlines() if line.strip()]
            return names or None
    return None


# ---------------------------------------------------------------------------------------------------------- images
def _images_of(spec: object, root: Path, what: str, problems: list[str]) -> list[Path]:
    """Image paths of a yaml split entry: a folder, a .txt list, or a list of either (relative to `root`)."""
    items = spec if isinstance(spec, list) else [spec]
    images: list[Path] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{what}: entries must be folder or list-file paths, got {type(item).__name__}")
        path = _inside_root(root, item, what)
        if path.is_dir():
            images += _folder_images(path, root, problems)
        elif path.suffix.lower() == ".txt":
            images += _listed_images(path, root, problems)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            raise DatasetError(f"{what}: {item} is neither an image folder nor a .txt list of images")
    return images


def _inside_root(root: Path, entry: str, what: str) -> Path:
    """A yaml entry resolved under `root` (Ultralytics' `../x` -> `x` fallback included); it must exist and stay
    inside `root`. Files go through utils.common.paths.resolve_inside; folders get the same containment test."""
    for candidate in (entry, entry[3:] if entry.startswith("../") else None):
        if candidate is None:
            continue
        target = (root / candidate).resolve()
        if target.is_dir() and target.is_relative_to(root):
            return (root / candidate) if not Path(candidate).is_absolute() else target
        if target.exists() and not target.is_dir():
            return _contained(root, root / candidate, f"{what} ({entry})")
    if (root / entry).resolve().is_relative_to(root):
        raise MissingFileError(f"{what}: {entry} not found under {root}; fix the entry or 'path'")
    raise DatasetError(f"{what}: {entry} leads outside the dataset folder {root}; keep the data inside it")


def _contained(root: Path, path: Path, what: str) -> Path:
    """utils.common.paths.resolve_inside for a path that may be written absolute (Ultralytics allows absolute entries in
    yaml and list files): it is taken relative to `root` first, so one inside the dataset passes and one outside
    (or a link leading out) is refused."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return resolve_inside(root, relative, what)


def _folder_images(folder: Path, root: Path, problems: list[str]) -> list[Path]:
    """The images under `folder`, walked once (a link loop ends; a link to a folder outside `root` is a line)."""
    found = []
    outside: list[Path] = []
    for path in walk_files(folder, within=root, refused=outside):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                _contained(root, path, f"image {path}")
            except UserError as err:
                problems.append(f"skipped: {err}")
                continue
            found.append(path)
    problems.extend(f"skipped (unsafe path): {link}: a link to a folder outside the dataset folder {root}; not "
                    "followed (keep every image inside the dataset)" for link in outside)
    return sorted(found)


def _listed_images(list_file: Path, root: Path, problems: list[str]) -> list[Path]:
    """Lines of an image list: paths relative to the list's folder (`./x` or `x`), or absolute; inside `root`."""
    images = []
    for number, line in enumerate(read_list_text(list_file).splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        try:
            _contained(root, path, f"{list_file}:{number}")
        except UserError as err:
            problems.append(f"skipped: {err}")
            continue
        images.append(Path(os.path.normpath(path)))
    return images


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ---------------------------------------------------------------------------------------------------------- labels
def parse_label_file(path: Path, names: list[str] | None, root: Path | None = None) -> YoloLabels:
    """Read one label file (a missing or empty file: a background image). Class ids map to `names`; an id outside
    them gets the name 'class id K' (counted as an unknown class, never used); names=None: ids become the names
    ('0', '1', ...). Notes are full problem lines, summarised after the first few."""
    labels = YoloLabels([], np.zeros((0, 4)), np.zeros(0, bool), None, source=path)
    if not path.exists():
        return labels
    try:
        if root is not None:
            _contained(root, path, f"label file {path}")
    except UserError as err:
        raise AnnotationError(f"{path}: cannot be used ({err}); fix or remove the label file") from None
    try:
        text = read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    notes = Notes()
    rows: list[list[float]] = []
    seen: dict[tuple, int] = {}
    keep: list[bool] = []
    num_classes = math.inf if names is None else len(names)
    for number, line in enumerate(io.StringIO(text, newline=None), 1):  # lazily: memory grows with rows kept only
        row = _parse_row(line, number, path, num_classes, notes)
        if row is None:
            continue
        if len(rows) == MAX_OBJECTS:
            raise too_many_objects(path, len(rows) + 1)
        ok = _row_usable(row, number, path, notes)
        key = tuple(row)
        if ok and key in seen:
            notes.add(f"{path}:{number}: repeats line {seen[key]} (dropped for training)", "repeated row")
            ok = False
        seen.setdefault(key, number)
        rows.append(row)
        keep.append(ok)
    labels.notes = notes.summary(f"{path}: ")
    _fill(labels, rows, keep, names)
    return labels


def _parse_row(line: str, number: int, path: Path, num_classes: float, notes: Notes) -> list[float] | None:
    """[class, xc, yc, w, h] of one line, or None (blank, or a problem noted)."""
    tokens = line.split()
    if not tokens:
        return None
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(i for i, t in enumerate(tokens, 1) if not _is_number(t))
        notes.add(f"{path}:{number}: non-numeric value in column {bad} (line skipped)", "non-numeric value")
        return None
    if not all(math.isfinite(v) for v in values):
        notes.add(f"{path}:{number}: nan or inf value (line skipped)", "nan or inf value")
        return None
    if len(values) != 5 and not (len(values) >= 7 and len(values) % 2 == 1):
        notes.add(f"{path}:{number}: {len(values)} columns; expected 5 (class xc yc w h) or a polygon "
                  "(class x1 y1 x2 y2 x3 y3 ...) (line skipped)", "wrong column count")
        return None
    cls = values[0]
    if cls != int(cls) or cls < 0:
        notes.add(f"{path}:{number}: class id {cls:g} is not a non-negative whole number (line skipped)",
                  "class id not a whole number")
        return None
    if cls >= MAX_CLASSES:
        notes.add(f"{path}:{number}: class id {cls:g} is larger than any dataset's ({MAX_CLASSES} classes at most; "
                  "line skipped)", "class id too large")
        return None
    if cls >= num_classes:
        notes.add(f"{path}:{number}: class id {int(cls)} is not in the {num_classes} class names (not used)",
                  "class id outside the names")
    if len(values) > 5:
        xs, ys = values[1::2], values[2::2]
        values = [cls, (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        notes.add(f"{path}:{number}: polygon of {len(xs)} points (segmentation label) read as its bounding box",
                  "polygon read as its box")
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _row_usable(row: list[float], number: int, path: Path, notes: Notes) -> bool:
    """Whether a parsed row trains; notes zero area and coordinates outside [0, 1] (clipped)."""
    _, xc, yc, w, h = row
    if w <= 0 or h <= 0:
        notes.add(f"{path}:{number}: zero or negative width/height (dropped for training)", "zero area")
        return False
    x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    if min(x1, y1) < 0 or max(x2, y2) > 1 or max(xc, yc) > 1 or min(xc, yc) < 0:
        if x2 <= 0 or y2 <= 0 or x1 >= 1 or y1 >= 1:
            notes.add(f"{path}:{number}: box entirely outside the image (dropped for training)", "box outside")
            return False
        notes.add(f"{path}:{number}: coordinates outside [0, 1] (clipped)", "coordinates clipped")
    return True


def _fill(labels: YoloLabels, rows: list[list[float]], keep: list[bool], names: list[str] | None) -> None:
    table = np.asarray(rows, np.float64).reshape(-1, 5)
    xc, yc, w, h = table[:, 1], table[:, 2], table[:, 3], table[:, 4]
    labels.boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    labels.train_boxes = labels.boxes.clip(0.0, 1.0)
    labels.train_keep = np.asarray(keep, bool)
    labels.class_ids = table[:, 0].astype(np.int64)
    labels.names = [str(k) if names is None else names[k] if k < len(names) else f"class id {k}"
                    for k in labels.class_ids]
    labels.difficult = np.zeros(len(table), bool)
