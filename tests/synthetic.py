"""Synthetic data for the tests, written on the fly: a tiny VOC dataset of coloured rectangles (make_voc), a dataset
index of solid rectangles whose colour is their class (coloured_index), a minimal checkpoint (write_weights) and a
Darknet partial backbone file such as yolov4-tiny.conv.29 (write_partial)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from utils.checkpoint import save_checkpoint
from utils.config import ModelConfig
from utils.darknet import CONV_LAYER_INDEX
from utils.darknet import write_weights as write_darknet_weights
from utils.datasets import DatasetIndex, ImageRecord

COLOURS = {"red": (0, 0, 255), "green": (0, 200, 0), "blue": (255, 0, 0)}  # BGR for cv2.imwrite


def voc_xml(name: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    rows = "".join(
        f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for cls, (x1, y1, x2, y2) in objects)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{rows}</annotation>")


def make_voc(root: Path, images: int = 4, size: tuple[int, int] = (96, 128), classes: tuple[str, ...] = ("red", "blue"),
             seed: int = 0, splits: dict[str, list[int]] | None = None) -> Path:
    """Write VOC2007/{Annotations,JPEGImages,ImageSets/Main} under `root`; by default every split holds every image."""
    rng = np.random.default_rng(seed)
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    height, width = size
    for i in range(images):
        image = np.full((height, width, 3), 235, np.uint8)
        objects = []
        for k in range(1 + i % 2):
            cls = classes[(i + k) % len(classes)]
            w, h = int(rng.integers(width // 5, width // 3)), int(rng.integers(height // 5, height // 3))
            x1 = int(rng.integers(0, width // 2 - w)) + (width // 2 if k else 0)
            y1 = int(rng.integers(0, height - h))
            cv2.rectangle(image, (x1, y1), (x1 + w, y1 + h), COLOURS[cls], -1)
            objects.append((cls, (x1, y1, x1 + w, y1 + h)))
        cv2.imwrite(str(year / "JPEGImages" / f"img{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (year / "Annotations" / f"img{i:03d}.xml").write_text(voc_xml(f"img{i:03d}", width, height, objects))
    ids = [f"img{i:03d}" for i in range(images)]
    splits = splits or {name: list(range(images)) for name in ("train", "val", "trainval", "test")}
    for name, members in splits.items():
        (year / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(ids[m] + "\n" for m in members))
    return root


def write_weights(path: Path, state: dict, config: ModelConfig) -> Path:
    """A minimal checkpoint of ours (weights + config), as predict.py and eval.py load it."""
    save_checkpoint({"model": state, "config": config.to_dict(), "format_version": 1}, path)
    return path


def write_partial(model: torch.nn.Module, path: Path, cutoff: int = 29) -> Path:
    """Like `darknet partial cfg weights out.conv.29 29`: keep the convs of cfg layers before `cutoff`.

    cutoff 29 keeps 17 convs (backbone + conv_for_P5 + the P5 head's 3x3); cutoff 27 keeps the 15 backbone convs.
    """
    return write_darknet_weights(model, path, num_convs=sum(1 for i in CONV_LAYER_INDEX if i < cutoff))


RECT_COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], dtype=np.uint8)  # RGB per class
RECT_BACKGROUND = 40


def coloured_index(root: Path, count: int = 8, seed: int = 0) -> DatasetIndex:
    """Images of random size, each with one or two solid rectangles whose colour is their class."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        height, width = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        image = np.full((height, width, 3), RECT_BACKGROUND, dtype=np.uint8)
        boxes, labels = [], []
        for k in range(1 + i % 2):  # second object in the lower-right half so the two never overlap
            x1 = int(rng.integers(k * width // 2, k * width // 2 + width // 4))
            y1 = int(rng.integers(k * height // 2, k * height // 2 + height // 4))
            x2, y2 = x1 + int(rng.integers(30, width // 4)), y1 + int(rng.integers(30, height // 4))
            label = (i + k) % len(RECT_COLOURS)
            image[y1:y2, x1:x2] = RECT_COLOURS[label]
            boxes.append([x1, y1, x2, y2])
            labels.append(label)
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        records.append(ImageRecord(path, path.stem, np.array(boxes, np.float32), np.array(labels, np.int64),
                                   np.zeros(len(labels), np.bool_), width, height))
    return DatasetIndex(records, ["red", "green", "blue", "yellow"], split="train")
