"""Convert a dataset between Pascal VOC, COCO json and YOLO txt: `python -m utils.convert --to yolo SRC DST`.

SRC is anything `--data` accepts (utils.data.index.load_split). What is kept:
- every image of every split the source states (train, val, test; a source without split files converts as one
  'train' split, said in the summary), readable or not, with its objects as annotated (ImageRecord.truth: boxes as
  written, not clipped; objects of every class the source names);
- class names and their order (VOC has no order of its own: its classes are the sorted names, as the loader reads
  them; a VOC target also gets classes.txt in the source's order);
- box coordinates as numbers, unshifted (VOC's xmin..xmax are written and read as the same pixel values; YOLO rows
  are normalised with 8 decimals, so a round trip moves a box by less than 1e-5 pixel on a 1000-pixel image);
- difficult (VOC) <-> iscrowd (COCO). YOLO txt has no such flag: those objects are written as ordinary rows, and the
  summary says how many (convert to VOC or COCO to keep them).
Images are copied (`--link`: hard-linked where the file system allows, else copied); SRC is never written to, and
DST must be a new or empty folder outside SRC. File names are made safe and unique
(utils.common.filenames.unique_stems).

DST appears only complete: everything is written into a work folder beside it (`.<DST name>.converting`, marked
unfinished by a file the loaders refuse: utils.data.index.UNFINISHED_MARKER), which becomes DST by one rename once
`convert.json` (what was converted, and that it is complete) is written. A killed conversion leaves only the work
folder: the same command run again starts it over and finishes; another command is refused with one line naming
the folder; train.py and eval.py refuse the folder instead of training on the images written so far.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import yaml

from utils.common.cli import run_command, setup_logging
from utils.common.errors import ConfigError, MissingFileError
from utils.common.filenames import unique_stems
from utils.data.formats import detect_format
from utils.data.index import UNFINISHED_MARKER, DatasetIndex, ImageRecord, load_split

LOGGER = logging.getLogger("convert")
FORMATS = ("voc", "coco", "yolo")
SPLIT_ORDER = ("train", "val", "test")
MANIFEST = "convert.json"  # written last into a destination: what was converted, and that it is complete


@dataclass
class Report:
    """What a conversion did, for the summary line."""

    images: int = 0
    objects: int = 0
    copied: int = 0
    linked: int = 0
    missing_images: list[str] = field(default_factory=list)
    difficult_as_plain: int = 0
    note: str = ""

    def summary(self, target: str, dst: Path) -> str:
        line = (f"{self.images} images, {self.objects} objects -> {target} in {dst} (images: {self.copied} copied, "
                f"{self.linked} hard-linked)")
        if self.difficult_as_plain:
            line += (f"; YOLO txt has no difficult flag: {self.difficult_as_plain} difficult/iscrowd object(s) "
                     "written as ordinary rows")
        if self.missing_images:
            line += f"; {len(self.missing_images)} image(s) could not be copied (annotations kept): " + ", ".join(
                self.missing_images[:5])
        return line + (f"; {self.note}" if self.note else "")


# ---------------------------------------------------------------------------------------------------------- reading
def stated_splits(src: Path) -> list[str]:
    """The splits a source states (without generating or writing any): a subset of train/val/test, or ['all']."""
    _, reader = detect_format(Path(src))
    found = reader.stated_splits(Path(src))
    return [s for s in SPLIT_ORDER if s in found] or ["all"]


def read_dataset(src: Path) -> tuple[list[str], dict[str, DatasetIndex]]:
    """(class names, {split: index with every image kept}) of a source."""
    indexes: dict[str, DatasetIndex] = {}
    classes = None
    for split in stated_splits(src):
        index = load_split(src, split, classes=classes, keep_unreadable=True)
        classes = index.classes
        indexes[split] = index
    return list(classes or []), indexes


# ---------------------------------------------------------------------------------------------------------- writing
def _place_image(record: ImageRecord, target: Path, link: bool, report: Report) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(record.path, target)
            report.linked += 1
            return
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    try:
        shutil.copyfile(record.path, target)
        report.copied += 1
    except OSError:
        report.missing_images.append(str(record.path))


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def _size(record: ImageRecord) -> tuple[int, int]:
    return record.width, record.height


def _voc_xml(record: ImageRecord, file_name: str, classes: list[str]) -> str:
    truth = record.ground_truth()
    width, height = _size(record)
    objects = "".join(
        f"<object><name>{escape(classes[int(label)])}</name><difficult>{int(flag)}</difficult><bndbox>"
        f"<xmin>{_number(b[0])}</xmin><ymin>{_number(b[1])}</ymin><xmax>{_number(b[2])}</xmax>"
        f"<ymax>{_number(b[3])}</ymax></bndbox></object>"
        for b, label, flag in zip(truth.boxes, truth.labels, truth.difficult, strict=True))
    return (f"<annotation><filename>{escape(file_name)}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>\n")


def write_voc(dst: Path, classes: list[str], splits: dict[str, list[tuple[ImageRecord, str]]], link: bool,
              report: Report) -> None:
    """DST/Annotations/<stem>.xml, DST/JPEGImages/<file>, DST/ImageSets/Main/<split>.txt, DST/classes.txt."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for record, name in items:
            _place_image(record, dst / "JPEGImages" / name, link, report)
            (dst / "Annotations" / f"{Path(name).stem}.xml").write_text(_voc_xml(record, name, classes), "utf-8")
        if split != "all":
            (dst / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(Path(n).stem + "\n" for _, n in items), "utf-8")
    if "train" in splits and "val" in splits:
        ids = [Path(n).stem for s in ("train", "val") for _, n in splits[s]]
        (dst / "ImageSets" / "Main" / "trainval.txt").write_text("".join(i + "\n" for i in ids), "utf-8")
    (dst / "classes.txt").write_text("".join(c + "\n" for c in classes), "utf-8")


def write_coco(dst: Path, classes: list[str], splits: dict[str, list[tuple[ImageRecord, str]]], link: bool,
               report: Report) -> None:
    """DST/annotations/instances_<split>.json and DST/<split>/<file>; category ids 1..N in class order."""
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(classes)]
    for split, items in splits.items():
        images, annotations = [], []
        for image_id, (record, name) in enumerate(items, 1):
            _place_image(record, dst / split / name, link, report)
            width, height = _size(record)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            truth = record.ground_truth()
            for box, label, flag in zip(truth.boxes.tolist(), truth.labels, truth.difficult, strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(flag)})
        content = {"images": images, "annotations": annotations, "categories": categories}
        (dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(content), "utf-8")


def _yolo_rows(record: ImageRecord) -> str:
    truth, (width, height) = record.ground_truth(), _size(record)
    rows = []
    for (x1, y1, x2, y2), label in zip(truth.boxes.tolist(), truth.labels, strict=True):
        values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        rows.append(f"{int(label)} " + " ".join(f"{v:.8f}" for v in values) + "\n")
    return "".join(rows)


def write_yolo(dst: Path, classes: list[str], splits: dict[str, list[tuple[ImageRecord, str]]], link: bool,
               report: Report) -> None:
    """DST/images/<split>/<file>, DST/labels/<split>/<stem>.txt and DST/data.yaml (names as a list)."""
    entries = {}
    for split, items in splits.items():
        folder = "train" if split == "all" else split
        entries[folder] = f"images/{folder}"
        for record, name in items:
            _place_image(record, dst / "images" / folder / name, link, report)
            label = dst / "labels" / folder / f"{Path(name).stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            if record.width and record.height:
                label.write_text(_yolo_rows(record), "utf-8")
            report.difficult_as_plain += int(record.ground_truth().difficult.sum())
    entries.setdefault("val", entries.get("train"))  # Ultralytics requires val
    yaml_text = yaml.safe_dump({**entries, "names": list(classes)}, sort_keys=False, allow_unicode=True)
    (dst / "data.yaml").write_text(yaml_text, "utf-8")


WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}


def convert(src: str | Path, dst: str | Path, to: str, link: bool = False) -> Report:
    """Convert the dataset at `src` into format `to` under the new folder `dst`; returns what was done. `dst`
    appears complete or not at all (see the module docstring)."""
    src, dst = Path(src), Path(dst)
    if to not in WRITERS:
        raise ConfigError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    if not src.exists():
        raise MissingFileError(f"{src} does not exist; give the dataset to convert")
    base = src.resolve() if src.is_dir() else src.resolve().parent
    if dst.resolve().is_relative_to(base):
        raise ConfigError(f"{dst} is inside the source {src}; write the converted dataset somewhere else")
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst} exists and is not empty; give a new folder")
    request = {"source": str(src.resolve()), "to": to, "link": link}
    classes, indexes = read_dataset(src)
    work = _start_work_folder(dst, request)
    report = _write(work, classes, indexes, to, link)
    manifest = {**request, "complete": True, "images": report.images, "objects": report.objects,
                "splits": {split: len(index.records) for split, index in indexes.items()}}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (work / UNFINISHED_MARKER).unlink()
    _publish(work, dst)
    return report


def _work_folder(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.converting"


def _start_work_folder(dst: Path, request: dict) -> Path:
    """A new work folder for `dst`, marked unfinished. One left by an interrupted run of the same command is
    started over (it is ours: its marker says so); one of another command is refused with one line."""
    work = _work_folder(dst)
    if work.exists():
        recorded = _recorded_request(work)
        if recorded != request:
            what = (f"an unfinished conversion of {recorded['source']} to {recorded['to']}" if recorded
                    else "files that are not an unfinished conversion")
            raise ConfigError(f"{work} holds {what}; re-run that command to finish it, or delete {work}")
        LOGGER.warning("%s: an interrupted conversion of the same source; starting it over", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / UNFINISHED_MARKER).write_text(json.dumps(request), encoding="utf-8")
    return work


def _recorded_request(work: Path) -> dict | None:
    """What the work folder's unfinished marker records ({source, to, link}), or None when it has none."""
    try:
        recorded = json.loads((work / UNFINISHED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {key: recorded.get(key) for key in ("source", "to", "link")} if isinstance(recorded, dict) else None


def _publish(work: Path, dst: Path) -> None:
    """Rename the finished work folder to `dst` (an empty `dst` the user made is replaced)."""
    if dst.exists():
        dst.rmdir()  # empty (checked before converting)
    os.replace(work, dst)


def _write(work: Path, classes: list[str], indexes: dict[str, DatasetIndex], to: str, link: bool) -> Report:
    """Write every record of `indexes` into `work` in format `to`; returns what was done."""
    report = Report()
    records = [(split, r) for split, index in indexes.items() for r in index.records]
    names = unique_stems([r.path.stem for _, r in records], fallback="image")
    splits: dict[str, list[tuple[ImageRecord, str]]] = {}
    for (split, record), stem in zip(records, names, strict=True):
        splits.setdefault(split, []).append((record, stem + record.path.suffix.lower()))
        report.images += 1
        report.objects += len(record.ground_truth().labels)
    if "all" in splits and to != "yolo":
        report.note = "the source states no splits: written as one set (the loaders make splits on the fly)"
    WRITERS[to](work, classes, splits, link, report)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format")
    parser.add_argument("src", help="dataset to convert (anything --data accepts)")
    parser.add_argument("dst", help="new (or empty) output folder")
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying (default: copy)")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> None:
        print(convert(args.src, args.dst, args.to, args.link).summary(args.to, Path(args.dst)))
    return run_command(run, args.verbose, LOGGER)


if __name__ == "__main__":
    sys.exit(main())
