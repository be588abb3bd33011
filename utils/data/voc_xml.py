"""Pascal VOC XML: the annotation files of a VOCdevkit (utils/data/formats/voc.py) and of an images/ + annotations/
folder (utils/data/formats/folder.py), and the listing both layouts share (one XML per image, same stem).

Annotation files are untrusted: DOCTYPE/ENTITY declarations are refused before parsing (no "billion laughs", no
external entities), a file is read only under MAX_ANNOTATION_BYTES and MAX_OBJECTS, and a coordinate that is not a
finite number (text, nan, inf, 1e999) makes its object a broken one, dropped with a note. Ids from split files never
lead outside the annotation folder.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

import numpy as np

from utils.common.image_io import IMAGE_SUFFIXES
from utils.common.paths import UnsafePathError, is_regular_file, resolve_inside
from utils.data.annotations import (
    MAX_OBJECTS,
    AnnotationError,
    Notes,
    RawAnnotation,
    number_from_text,
    quoted,
    read_bounded,
    too_many_objects,
)
from utils.data.reader import Entry

# Entity declarations allow "billion laughs" expansion and external-entity reads; VOC files never need them.
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------- XML
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
    data = read_bounded(path)
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
    """(height, width) of <size>, or None with a note when absent or not two positive finite numbers."""
    size = root.find("size")
    if size is None:
        notes.append("no <size> in XML (used the real image size)")
        return None
    width, height = number_from_text(_text(size, "width")), number_from_text(_text(size, "height"))
    if width is None or height is None:
        notes.append("unreadable <size> in XML (used the real image size)")
        return None
    if int(width) <= 0 or int(height) <= 0:
        notes.append(f"<size> {int(width)}x{int(height)} in XML is not positive (used the real image size)")
        return None
    return int(height), int(width)


def _xml_object(obj: ET.Element, number: int, notes: Notes) -> tuple[str, list[float], bool] | None:
    """(name, [x1, y1, x2, y2], difficult) of one <object>, or None (with a note) when unusable."""
    name = _text(obj, "name")
    if not name:
        notes.add(f"object {number} has no <name> (dropped)", "object without <name>")
        return None
    bndbox = obj.find("bndbox")
    if bndbox is None:
        notes.add(f"object {number} ({quoted(name)}) has no <bndbox> (dropped)", "object without <bndbox>")
        return None
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = _text(bndbox, tag)
        value = number_from_text(text)
        if value is None:
            kind = "non-finite" if _is_float_text(text) else "non-numeric"
            notes.add(f"object {number} ({quoted(name)}) has a {kind} {tag} (dropped)", f"{kind} coordinate")
            return None
        coords.append(value)
    return name, coords, _text(obj, "difficult") == "1"


def _is_float_text(text: str | None) -> bool:
    """Whether float() reads `text` (nan, inf and '1e999' included): tells a non-finite value from text."""
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def parse_voc_xml(path: str | Path) -> RawAnnotation:
    """Parse one Pascal VOC XML file. Raises AnnotationError for unreadable, unsafe, malformed or oversized files."""
    path = Path(path)
    root = _read_xml(path)
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, not <annotation>; is this a VOC XML file?")
    notes: list[str] = []
    size = _xml_size(root, notes)
    objects = root.findall("object")
    if len(objects) > MAX_OBJECTS:
        raise too_many_objects(path, len(objects))
    object_notes = Notes()
    parsed = [_xml_object(obj, i + 1, object_notes) for i, obj in enumerate(objects)]
    parsed = [p for p in parsed if p is not None]
    boxes = np.array([p[1] for p in parsed], dtype=np.float64).reshape(-1, 4)
    return RawAnnotation(names=[p[0] for p in parsed], boxes=boxes,
                         difficult=np.array([p[2] for p in parsed], dtype=np.bool_), size=size,
                         notes=notes + object_notes.summary(), filename=_text(root, "filename"))


# ---------------------------------------------------------------------------------------------------------- entries
def image_lookup(folder: Path) -> dict[str, Path]:
    """{stem: image path} of a folder (not recursive), preferring .jpg when a stem exists with several suffixes."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir(), key=lambda p: (p.suffix.lower() != ".jpg", p.name)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(path.stem, path)
    return found


def _parse(path: Path) -> RawAnnotation | AnnotationError:
    try:
        return parse_voc_xml(path)
    except AnnotationError as err:
        return err


def xml_entries(ids: list[str], xml_dir: Path, images: dict[str, Path], problems: list[str],
                listed_in: str = "the split") -> list[Entry]:
    """Entries of `ids` (Annotations/<id>.xml and the image of that stem); ids leading outside xml_dir are
    refused, listed ids without an XML are problem lines."""
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
        image = images.get(image_id)
        entries.append(Entry(image, xml, _parse(xml), root=image.parent if image else None,
                             relative=image.name if image else None, field=f"{xml}: its image"))
    return entries


def orphans(images: dict[str, Path], xml_dir: Path, problems: list[str]) -> None:
    """A problem line for each image without an annotation."""
    for stem, path in images.items():
        if not (xml_dir / f"{stem}.xml").is_file():
            problems.append(f"skipped: {path}: image has no annotation {xml_dir / (stem + '.xml')}; add one "
                            "(an XML without objects makes it a background image)")


def xml_ids(xml_dir: Path) -> list[str]:
    """Stems of the XML files of a folder (not recursive)."""
    return sorted(p.stem for p in xml_dir.glob("*.xml"))
