"""COCO: an `instances_*.json` (images, annotations, categories), or a folder holding annotations/instances_<split>
[2017].json with the images in <split>[2017]/ (as COCO 2017 is unpacked).

A json holds one split. Given instances_train2017.json, split 'val' is read from its sibling instances_val2017.json;
a json without siblings is split in memory (seeded), so train, val and test never share an image. Class names are
the categories in id order. Boxes are [x, y, w, h] as written, continuous (pixel_offset 0), and pycocotools scores
against the json itself (`ground_truth`: the same entries the index kept, areas and crowd flags as written).

The json is untrusted: it is read with bounds (utils.common.safe_load.load_json: size, nesting), every field is
checked before use (ids must be whole numbers, bbox 4 finite numbers, area and iscrowd numbers), and each entry that
fails is one line (`skipped:` / `dropped:`), never a KeyError or a NaN box. `file_name` is resolved inside the image
folder when the entry is checked.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.common.errors import DatasetError, MissingFileError
from utils.common.safe_load import JsonFileError, load_json
from utils.data.annotations import (
    MAX_OBJECTS,
    AnnotationError,
    Notes,
    RawAnnotation,
    finite_number,
    whole_number,
)
from utils.data.reader import FORMATS, DatasetReader, Entry, SourceSplit, split_ids

_SPLIT_FILE = re.compile(r"instances_(train|val|test)(\d*)\.json")


@dataclass
class CocoImage:
    """One COCO image entry with its usable annotations (`annotations`: the json's dicts, as written)."""

    coco_id: int
    file_name: str
    size: tuple[int, int] | None  # (height, width) stated by the json; None when absent or unusable
    annotation: RawAnnotation
    category_ids: list[int]
    annotations: list[dict] = field(default_factory=list)


@dataclass
class CocoFile:
    """A parsed instances json: images in file order, {category id: name} in id order, and a line per problem."""

    images: list[CocoImage]
    categories: dict[int, str]
    problems: list[str]


def parse_coco_json(path: str | Path, problems: list[str] | None = None
                    ) -> tuple[list[CocoImage], dict[int, str]]:
    """Read a COCO instances json: (images in file order, {category id: name} in id order).

    bbox [x, y, w, h] -> (x1, y1, x2, y2); iscrowd regions are flagged difficult (kept for evaluation, never targets).
    An image id listed twice keeps its first entry, an annotation id seen twice its first annotation, an annotation
    whose image id is not listed is dropped, and an entry with a missing or unusable field is left out: each gets
    one line in `problems` (when a list is given). Raises AnnotationError for a file that is no COCO json at all.
    """
    path = Path(path)
    parsed = _read(path, path.stat().st_mtime_ns if path.exists() else 0)
    if problems is not None:
        problems.extend(parsed.problems)
    return parsed.images, parsed.categories


@functools.lru_cache(maxsize=2)
def _read(path: Path, mtime_ns: int) -> CocoFile:
    """The parsed json, cached while the file is unchanged (training reads its val split every validation)."""
    try:
        content = load_json(path)
    except (JsonFileError, MissingFileError) as err:
        raise AnnotationError(f"{err}; is it a COCO instances file?") from None
    if not isinstance(content, dict) or not all(isinstance(content.get(k), list)
                                                for k in ("images", "annotations", "categories")):
        raise AnnotationError(f"{path}: not a COCO instances file (needs the lists 'images', 'annotations' and "
                              "'categories')")
    problems: list[str] = []
    categories = _categories(path, content["categories"], problems)
    entries = _unique_images(path, content["images"], problems)
    by_image = _annotations_by_image(path, content["annotations"], entries.keys(), problems)
    images = []
    for coco_id, entry in entries.items():
        anns = by_image.get(coco_id, [])
        if len(anns) > MAX_OBJECTS:
            problems.append(f"skipped: {path}: image id {coco_id} has {len(anns)} annotations, more than the "
                            f"{MAX_OBJECTS} allowed for one image (the limit bounds memory); check the json")
            continue
        images.append(_coco_image(coco_id, entry, anns, categories))
    return CocoFile(images, categories, problems)


def _categories(path: Path, categories: list, problems: list[str]) -> dict[int, str]:
    """{id: name} in id order; a category without a whole-number id or a name, or repeating an id, is a line."""
    found: dict[int, str] = {}
    for position, category in enumerate(categories):
        coco_id = whole_number(category.get("id")) if isinstance(category, dict) else None
        name = category.get("name") if isinstance(category, dict) else None
        if coco_id is None or not isinstance(name, str) or not name:
            problems.append(f"skipped: {path}: categories[{position}] has no whole-number 'id' and text 'name'; its "
                            "annotations count as objects of an unknown class: fix the entry")
        elif coco_id in found:
            problems.append(f"skipped: {path}: categories[{position}] repeats category id {coco_id} (first kept)")
        else:
            found[coco_id] = name
    return dict(sorted(found.items()))


def _unique_images(path: Path, images: list, problems: list[str]) -> dict[int, dict]:
    """{image id: entry}, first entry kept; an unusable entry, a repeated id or file_name gets a problem line."""
    entries: dict[int, dict] = {}
    names: dict[str, int] = {}
    for position, entry in enumerate(images):
        coco_id = whole_number(entry.get("id")) if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if coco_id is None or not isinstance(file_name, str) or not file_name:
            problems.append(f"skipped: {path}: images[{position}] has no whole-number 'id' and text 'file_name'; "
                            "fix the entry")
            continue
        if coco_id in entries:
            problems.append(f"skipped: {path}: images[{position}] repeats image id {coco_id} (first entry kept); "
                            "give every image its own id")
            continue
        if file_name in names:
            problems.append(f"skipped: {path}: images[{position}] (id {coco_id}) lists the file of image id "
                            f"{names[file_name]} again (first entry kept); list each image once")
            continue
        entries[coco_id] = entry
        names[file_name] = coco_id
    return entries


def _annotations_by_image(path: Path, annotations: list, image_ids, problems: list[str]) -> dict[int, list]:
    """Annotations grouped by image id; those of unknown images, without a whole-number image_id, and repeated
    annotation ids get a problem line."""
    by_image: dict[int, list[dict]] = {}
    seen: set[int] = set()
    known = set(image_ids)
    for position, ann in enumerate(annotations):
        image_id = whole_number(ann.get("image_id")) if isinstance(ann, dict) else None
        ann_id = whole_number(ann.get("id")) if isinstance(ann, dict) else None
        if image_id is None:
            problems.append(f"dropped: {path}: annotations[{position}] has no whole-number 'image_id'; fix it")
            continue
        if image_id not in known:
            problems.append(f"dropped: {path}: annotations[{position}] (id {ann_id}) points at image id {image_id}, "
                            "which the json does not list; add the image or remove the annotation")
            continue
        if ann_id is not None and ann_id in seen:
            problems.append(f"dropped: {path}: annotations[{position}] repeats annotation id {ann_id} (first kept); "
                            "give every annotation its own id")
            continue
        if ann_id is not None:
            seen.add(ann_id)
        by_image.setdefault(image_id, []).append(ann)
    return by_image


def annotation_problem(ann: dict) -> str | None:
    """Why an annotation cannot be used (a phrase), or None: bbox must be 4 finite numbers, category_id a whole
    number, iscrowd 0 or 1 and area (when given) a finite number; a NaN or inf in any of them is a broken entry."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or any(finite_number(v) is None for v in bbox):
        return "has an invalid bbox (not 4 finite numbers; dropped)"
    if whole_number(ann.get("category_id")) is None:
        return "has no whole-number category_id (dropped)"
    if whole_number(ann.get("iscrowd", 0)) not in (0, 1):
        return "has an iscrowd that is not 0 or 1 (dropped)"
    if "area" in ann and finite_number(ann["area"]) is None:
        return "has a non-finite or non-numeric area (dropped)"
    return None


def _image_size(entry: dict, notes: list[str]) -> tuple[int, int] | None:
    height, width = whole_number(entry.get("height")), whole_number(entry.get("width"))
    if height is None or width is None or height <= 0 or width <= 0:
        notes.append("width/height in the json are not positive whole numbers (used the real image size)")
        return None
    return height, width


def _coco_image(coco_id: int, entry: dict, anns: list[dict], categories: dict[int, str]) -> CocoImage:
    notes: list[str] = []
    size = _image_size(entry, notes)
    object_notes = Notes()
    kept = []
    for ann in anns:
        problem = annotation_problem(ann)
        if problem is None:
            kept.append(ann)
        else:
            object_notes.add(f"annotation {whole_number(ann.get('id'))} {problem}", problem)
    boxes = np.array([[float(v) for v in a["bbox"]] for a in kept], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    category_ids = [whole_number(a["category_id"]) for a in kept]
    annotation = RawAnnotation(names=[categories.get(c, f"<category id {c}>") for c in category_ids], boxes=boxes,
                               difficult=np.array([whole_number(a.get("iscrowd", 0)) == 1 for a in kept], np.bool_),
                               size=size, notes=notes + object_notes.summary())
    return CocoImage(coco_id, entry["file_name"], size, annotation, category_ids, kept)


def ground_truth(json_path: Path, image_ids: list[int]) -> dict:
    """What pycocotools scores for `image_ids`: the json's own entries that the index kept (bbox, area as written,
    w * h when absent; iscrowd), with fresh annotation ids (pycocotools needs unique ones)."""
    images, categories = parse_coco_json(json_path)
    wanted = set(image_ids)
    chosen = [image for image in images if image.coco_id in wanted]
    annotations = []
    for image in chosen:
        for ann in image.annotations:
            bbox = [float(v) for v in ann["bbox"]]
            annotations.append({"id": len(annotations) + 1, "image_id": image.coco_id, "bbox": bbox,
                                "category_id": whole_number(ann["category_id"]),
                                "area": float(ann.get("area", bbox[2] * bbox[3])),
                                "iscrowd": whole_number(ann.get("iscrowd", 0))})
    return {"images": [{"id": image.coco_id} for image in chosen], "annotations": annotations,
            "categories": [{"id": coco_id, "name": name} for coco_id, name in categories.items()]}


# ---------------------------------------------------------------------------------------------------------- reader
@FORMATS.register("coco")
class CocoReader(DatasetReader):
    description = ("a COCO instances json, or a folder with annotations/instances_<split>2017.json and "
                   "<split>2017/ images")
    pixel_offset = 0.0  # COCO boxes are continuous coordinates

    def detect(self, data: Path) -> bool:
        if data.is_file():
            return data.suffix.lower() == ".json"
        return data.is_dir() and any((data / "annotations").glob("instances_*.json"))

    def stated_splits(self, data: Path) -> list[str]:
        if data.is_file():
            return []
        return [s for s in ("train", "val", "test") if any((data / "annotations").glob(f"instances_{s}*.json"))]

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        json_path, part = _json_split(data, split) if data.is_file() else (_folder_json(data, split), "all")
        problems: list[str] = []
        images, categories = parse_coco_json(json_path, problems)
        made = part != "all"
        if made:  # the only json of its dataset: split in memory, so train, val and test never share an image
            chosen = set(split_ids([str(image.coco_id) for image in images], part, seed, json_path))
            images = [image for image in images if str(image.coco_id) in chosen]
        folder = _image_dir(json_path)
        entries = [Entry(folder / image.file_name, json_path, image.annotation, image.coco_id, image.file_name,
                         folder, f"{json_path}: image id {image.coco_id} file_name") for image in images]
        return SourceSplit(entries, list(categories.values()), folder.parent, made, problems, json_path)


def _siblings(json_path: Path) -> dict[str, Path]:
    """{split: instances_<split><year>.json} beside `json_path` with the same year, `json_path` included; empty when
    its name is not instances_<train|val|test><year>.json."""
    match = _SPLIT_FILE.fullmatch(json_path.name)
    if match is None:
        return {}
    return {split: json_path.with_name(f"instances_{split}{match[2]}.json") for split in ("train", "val", "test")
            if json_path.with_name(f"instances_{split}{match[2]}.json").is_file()}


def _json_split(json_path: Path, split: str) -> tuple[Path, str]:
    """(the json holding `split`, the part of it to use: "all", or a split to make in memory)."""
    siblings = _siblings(json_path)
    if split == "all":
        return json_path, "all"
    if split in siblings:
        return siblings[split], "all"
    if len(siblings) > 1:
        raise DatasetError(f"{json_path}: no instances_{split}*.json beside it (found "
                           f"{', '.join(p.name for p in siblings.values())}); choose one of those splits "
                           "(e.g. --train-split train --val-split val), or 'all' to use one file whole")
    return json_path, split


def _folder_json(root: Path, split: str) -> Path:
    for name in (f"instances_{split}2017.json", f"instances_{split}.json"):
        if (root / "annotations" / name).is_file():
            return root / "annotations" / name
    found = ", ".join(sorted(p.name for p in (root / "annotations").glob("instances_*.json")))
    raise DatasetError(f"{root}: no annotations/instances_{split}2017.json (found {found}); choose a split those "
                       "files hold, or give one json as --data")


def _image_dir(json_path: Path) -> Path:
    """The image folder of instances_<name>.json: <root>/<name>, beside the json, or an images/ folder."""
    name = json_path.stem.removeprefix("instances_")
    candidates = [json_path.parent.parent / name, json_path.parent / name, json_path.parent.parent / "images" / name,
                  json_path.parent / "images", json_path.parent.parent / "images"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise MissingFileError(f"{json_path}: no image folder found (looked for {', '.join(map(str, candidates[:3]))}); "
                           "put the images beside the annotations as in COCO (train2017/, val2017/)")
