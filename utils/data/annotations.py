"""Parsing annotation files: Pascal VOC XML and COCO `instances_*.json`. Boxes come out as (x1, y1, x2, y2) pixels.

Nothing here raises on a single bad object: each problem becomes a note (a short phrase) so the dataset index can
report one line per file. Only a file that cannot be used at all raises `AnnotationError`.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from utils.common.errors import UserError
from utils.common.paths import is_regular_file

# Entity declarations allow "billion laughs" expansion and external-entity reads; VOC files never need them.
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class AnnotationError(UserError, ValueError):
    """An annotation file that cannot be used; the message names the file and the fix."""


@dataclass
class RawAnnotation:
    """Objects of one image before class names are mapped to indices.

    boxes: float64 [N, 4] (x1, y1, x2, y2) in the annotation's pixel grid, exactly as written; names: N class names;
    difficult: bool [N] (VOC difficult=1, or COCO iscrowd); size: (height, width) stated by the file, None if absent.
    """

    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None
    notes: list[str] = field(default_factory=list)
    filename: str | None = None


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


class _Doctype(Exception):
    pass


def _raise_doctype(*_args) -> None:
    raise _Doctype


def _declares_doctype(data: bytes) -> bool:
    """True when expat meets a DOCTYPE. Catches what the byte regex cannot see (UTF-16/32 encoded files); expat stops
    at the declaration's start, before any entity is defined or expanded (the check defusedxml makes)."""
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _raise_doctype
    try:
        parser.Parse(data, True)
    except _Doctype:
        return True
    except expat.ExpatError:
        return False  # malformed: ElementTree reports it with its position
    return False


def _read_xml(path: Path) -> ET.Element:
    if not is_regular_file(path):
        raise AnnotationError(f"{path}: is not a regular file (missing, a folder, FIFO or device); refused without "
                              "opening it")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror or err}); check the file and its "
                              "permissions") from None
    if not data.strip():
        raise AnnotationError(f"{path}: is an empty XML file; re-export the annotation")
    if _UNSAFE_XML.search(data) or _declares_doctype(data):
        raise AnnotationError(f"{path}: contains a DOCTYPE/ENTITY declaration, refused for safety (entity expansion, "
                              "external entities); remove the declaration (VOC annotations never need one)")
    try:
        return ET.fromstring(data)
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: malformed XML ({err}); fix or re-export the annotation") from None


def _xml_size(root: ET.Element, notes: list[str]) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        notes.append("no <size> in XML (used the real image size)")
        return None
    try:
        width, height = int(float(_text(size, "width") or "")), int(float(_text(size, "height") or ""))
    except ValueError:
        notes.append("unreadable <size> in XML (used the real image size)")
        return None
    if width <= 0 or height <= 0:
        notes.append(f"<size> {width}x{height} in XML is not positive (used the real image size)")
        return None
    return height, width


def _short(name: str, limit: int = 40) -> str:
    """A class name for a message: quoted, cut to `limit` characters (a hostile file can hold anything)."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _xml_object(obj: ET.Element, number: int, notes: list[str]) -> tuple[str, list[float], bool] | None:
    """(name, [x1, y1, x2, y2], difficult) of one <object>, or None (with a note) when unusable."""
    name = _text(obj, "name")
    if not name:
        notes.append(f"object {number} has no <name> (dropped)")
        return None
    bndbox = obj.find("bndbox")
    if bndbox is None:
        notes.append(f"object {number} ({_short(name)}) has no <bndbox> (dropped)")
        return None
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        value = _text(bndbox, tag)
        try:
            coords.append(float(value))
        except (TypeError, ValueError):
            notes.append(f"object {number} ({_short(name)}) has a non-numeric {tag} (dropped)")
            return None
    if not all(np.isfinite(coords)):
        notes.append(f"object {number} ({_short(name)}) has a non-finite coordinate (dropped)")
        return None
    return name, coords, _text(obj, "difficult") == "1"


def parse_voc_xml(path: str | Path) -> RawAnnotation:
    """Parse one Pascal VOC XML file. Raises AnnotationError for unreadable, unsafe or malformed files."""
    path = Path(path)
    root = _read_xml(path)
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, not <annotation>; is this a VOC XML file?")
    notes: list[str] = []
    size = _xml_size(root, notes)
    parsed = [_xml_object(obj, i + 1, notes) for i, obj in enumerate(root.iter("object"))]
    parsed = [p for p in parsed if p is not None]
    boxes = np.array([p[1] for p in parsed], dtype=np.float64).reshape(-1, 4)
    return RawAnnotation(names=[p[0] for p in parsed], boxes=boxes,
                         difficult=np.array([p[2] for p in parsed], dtype=np.bool_), size=size, notes=notes,
                         filename=_text(root, "filename"))


@dataclass
class CocoImage:
    """One COCO image entry with its annotations; category ids kept as in the file."""

    coco_id: int
    file_name: str
    size: tuple[int, int]  # (height, width) stated by the json
    annotation: RawAnnotation
    category_ids: list[int]


def parse_coco_json(path: str | Path, problems: list[str] | None = None
                    ) -> tuple[list[CocoImage], dict[int, str]]:
    """Read a COCO instances json: (images in file order, {category id: name} in id order).

    bbox [x, y, w, h] -> (x1, y1, x2, y2); iscrowd regions are flagged difficult (kept for evaluation, never targets).
    An image id listed twice keeps its first entry, an annotation id seen twice its first annotation, and an
    annotation whose image id is not listed is dropped: each gets one line in `problems` (when a list is given).
    """
    path = Path(path)
    if not is_regular_file(path):
        raise AnnotationError(f"{path}: is not a regular file (missing, a folder, FIFO or device); refused without "
                              "opening it")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"{type(err).__name__} at position {getattr(err, 'pos', getattr(err, 'start', '?'))}"
        raise AnnotationError(f"{path}: cannot be read as JSON ({reason}); is it a COCO instances file?") from None
    if not isinstance(content, dict) or not {"images", "annotations", "categories"} <= content.keys():
        raise AnnotationError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    problems = [] if problems is None else problems
    categories = {int(c["id"]): str(c["name"]) for c in sorted(content["categories"], key=lambda c: int(c["id"]))}
    entries = _unique_images(path, content["images"], problems)
    by_image = _annotations_by_image(path, content["annotations"], entries.keys(), problems)
    images = [_coco_image(entry, by_image.get(coco_id, []), categories) for coco_id, entry in entries.items()]
    return images, categories


def _unique_images(path: Path, images: list[dict], problems: list[str]) -> dict[int, dict]:
    """{image id: entry}, first entry kept; a repeated id or file_name gets a problem line."""
    entries: dict[int, dict] = {}
    names: dict[str, int] = {}
    for position, entry in enumerate(images):
        coco_id, file_name = int(entry["id"]), str(entry["file_name"])
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


def _annotations_by_image(path: Path, annotations: list[dict], image_ids, problems: list[str]) -> dict[int, list]:
    """Annotations grouped by image id; those of unknown images and repeated annotation ids get a problem line."""
    by_image: dict[int, list[dict]] = {}
    seen: set = set()
    known = set(image_ids)
    for position, ann in enumerate(annotations):
        ann_id, image_id = ann.get("id"), int(ann["image_id"])
        if image_id not in known:
            problems.append(f"dropped: {path}: annotations[{position}] (id {ann_id}) points at image id {image_id}, "
                            "which the json does not list; add the image or remove the annotation")
            continue
        if ann_id is not None and ann_id in seen:
            problems.append(f"dropped: {path}: annotations[{position}] repeats annotation id {ann_id} (first kept); "
                            "give every annotation its own id")
            continue
        seen.add(ann_id)
        by_image.setdefault(image_id, []).append(ann)
    return by_image


def _coco_image(entry: dict, anns: list[dict], categories: dict[int, str]) -> CocoImage:
    notes: list[str] = []
    kept = []
    for ann in anns:
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            notes.append(f"annotation {ann.get('id')} has an invalid bbox (not 4 numbers; dropped)")
            continue
        kept.append(ann)
    boxes = np.array([a["bbox"] for a in kept], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    category_ids = [int(a["category_id"]) for a in kept]
    annotation = RawAnnotation(names=[categories.get(c, f"<category id {c}>") for c in category_ids], boxes=boxes,
                               difficult=np.array([bool(a.get("iscrowd", 0)) for a in kept], dtype=np.bool_),
                               size=(int(entry["height"]), int(entry["width"])), notes=notes)
    return CocoImage(int(entry["id"]), str(entry["file_name"]), annotation.size, annotation, category_ids)
