"""A small-object detection set made from a dataset with train/val/test splits, for the two- against three-head study:
each output image is a grid x grid mosaic of images of one split, each letterboxed into its cell, so every object
shrinks by about the grid factor at the same image size (COCO's APs counts objects under 32 x 32 pixels).

    python benchmarks/small_objects.py --data VOCdevkit --out logs/small_objects --grid 3

Writes a VOC2007 folder (JPEGImages, Annotations, ImageSets/Main/{train,val,test}.txt; as many mosaics per split as
the split has images, each input image used about grid^2 times per split, never across splits, so the test mosaics
hold no training image). Deterministic for a seed. Difficult objects stay difficult.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/small_objects.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.common.image_io import read_image  # noqa: E402
from utils.data.index import ImageRecord, load_split  # noqa: E402

SPLITS = ("train", "val", "test")
MIN_SIDE = 2.0  # px: a box shrunk below this on a side is dropped (no annotation can draw it)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="VOCdevkit", help="source dataset with train, val and test splits")
    parser.add_argument("--out", default="logs/small_objects", help="VOCdevkit folder to write (replaced)")
    parser.add_argument("--grid", type=int, default=3, help="images per mosaic side: objects shrink by this factor")
    parser.add_argument("--side", type=int, default=480, help="mosaic side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="which images go into which mosaic")
    return parser


def mosaic(records: list[ImageRecord], grid: int, side: int) -> tuple[np.ndarray, list[tuple]]:
    """grid^2 records letterboxed into the cells of a side x side RGB canvas; (canvas, [(class index, difficult,
    (x1, y1, x2, y2) canvas px)])."""
    canvas = np.full((side, side, 3), 114, np.uint8)
    cell = side // grid
    objects = []
    for position, record in enumerate(records):
        image = read_image(record.path)
        scale = min(cell / image.shape[0], cell / image.shape[1])
        h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        y0, x0 = (position // grid) * cell, (position % grid) * cell
        canvas[y0:y0 + h, x0:x0 + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        for box, label, difficult in zip(record.boxes, record.labels, record.difficult, strict=True):
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            if min(x2 - x1, y2 - y1) >= MIN_SIDE:
                objects.append((int(label), bool(difficult), (x0 + x1, y0 + y1, x0 + x2, y0 + y2)))
    return canvas, objects


def annotation_xml(image_id: str, side: int, objects: list[tuple], classes: list[str]) -> bytes:
    """Pascal VOC XML; boxes as 1-based inclusive pixel indices (xmin = x1 + 1, xmax = x2), as VOC writes them."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", side), ("height", side), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for label, difficult, (x1, y1, x2, y2) in objects:
        item = ET.SubElement(root, "object")
        ET.SubElement(item, "name").text = classes[label]
        ET.SubElement(item, "difficult").text = str(int(difficult))
        box = ET.SubElement(item, "bndbox")
        for key, value in (("xmin", round(x1) + 1), ("ymin", round(y1) + 1), ("xmax", round(x2)), ("ymax", round(y2))):
            ET.SubElement(box, key).text = str(value)
    return ET.tostring(root, encoding="utf-8")


def make_small_objects(data: str, out: str | Path, grid: int = 3, side: int = 480, seed: int = 0) -> dict[str, int]:
    """Write the mosaic dataset; returns the number of objects per split."""
    year = Path(out) / "VOC2007"
    if year.exists():
        shutil.rmtree(year)
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (year / folder).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    counts = {}
    classes = load_split(data, "all").classes  # one class list for every split
    for split in SPLITS:
        index = load_split(data, split, classes=classes, keep_difficult=True)
        records = [r for r in index.records if r.image_error is None]
        order = np.concatenate([rng.permutation(len(records)) for _ in range(grid * grid)])
        ids, counts[split] = [], 0
        for number in range(len(records)):
            chosen = [records[i] for i in order[number * grid * grid:(number + 1) * grid * grid]]
            canvas, objects = mosaic(chosen, grid, side)
            image_id = f"{split}_{number:04d}"
            cv2.imwrite(str(year / "JPEGImages" / f"{image_id}.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            (year / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(image_id, side, objects,
                                                                                  index.classes))
            ids.append(image_id)
            counts[split] += len(objects)
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    counts = make_small_objects(args.data, args.out, args.grid, args.side, args.seed)
    print(f"{args.out}: objects per split {counts}, {args.grid}x{args.grid} mosaics of {args.side} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
