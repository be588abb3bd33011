"""Synthetic data for the tests, written on the fly: a tiny VOC dataset of coloured rectangles (make_voc), a dataset
index of solid rectangles whose colour is their class (coloured_index), a minimal checkpoint (write_weights), a
Darknet partial backbone file such as yolov4-tiny.conv.29 (write_partial), and a stand-in detector that finds such
rectangles exactly (ColourOracle: deterministic figures for end-to-end evaluation tests)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from utils.common.boxes import GroundTruthBoxes
from utils.data.index import DatasetIndex, ImageRecord
from utils.model.checkpoint import save_checkpoint
from utils.model.config import ModelConfig
from utils.model.darknet import CONV_LAYER_INDEX
from utils.model.darknet import write_weights as write_darknet_weights

COLOURS = {"red": (0, 0, 255), "green": (0, 200, 0), "blue": (255, 0, 0)}  # BGR for cv2.imwrite


def voc_xml(name: str, width: int, height: int, objects: list[tuple]) -> str:
    """VOC XML text; objects are (class, (x1, y1, x2, y2)) or (class, (x1, y1, x2, y2), difficult)."""
    rows = "".join(
        f"<object><name>{obj[0]}</name><difficult>{int(obj[2]) if len(obj) > 2 else 0}</difficult><bndbox>"
        f"<xmin>{obj[1][0]}</xmin><ymin>{obj[1][1]}</ymin><xmax>{obj[1][2]}</xmax><ymax>{obj[1][3]}</ymax></bndbox>"
        "</object>" for obj in objects)
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


class ColourOracle(nn.Module):
    """A stand-in detector that finds pure-colour rectangles by thresholding and writes raw YOLO head outputs that
    decode to their boxes: exercises letterbox -> forward -> decode -> NMS -> unletterbox -> metrics exactly.

    colours: RGB per class index (one rectangle per class and image is found: the extent of its colour).
    distinct_scores: scores that differ per box (from its size), so that score order is never a tie.
    """

    def __init__(self, config: ModelConfig, colours: list[tuple[int, int, int]],
                 distinct_scores: bool = False) -> None:
        super().__init__()
        self.config = config
        self.colours = colours
        self.distinct_scores = distinct_scores
        self.dummy = nn.Parameter(torch.zeros(1))
        self.anchors = torch.tensor(config.anchors)[config.anchors_mask[0]]  # the first head's anchors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, _, h, w = x.shape
        nc, stride = self.config.num_classes, self.config.strides[0]  # boxes go to the first head only
        outputs = [torch.full((b, 3 * (5 + nc), h // s, w // s), -20.0) for s in self.config.strides]
        first = outputs[0].view(b, 3, 5 + nc, h // stride, w // stride)
        for i in range(b):
            for k, colour in enumerate(self.colours):
                colour = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
                ys, xs = torch.nonzero(((x[i].float() - colour).abs().max(dim=0).values < 0.25), as_tuple=True)
                if len(xs):
                    self._write(first[i, k % 3], xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, k, stride)
        return tuple(outputs)

    def _write(self, head, x1, y1, x2, y2, k, stride: int) -> None:
        cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1).float(), (y2 - y1).float()
        gx, gy = int(cx // stride), int(cy // stride)
        head[0, gy, gx] = torch.logit(cx / stride - gx, eps=1e-6)
        head[1, gy, gx] = torch.logit(cy / stride - gy, eps=1e-6)
        head[2, gy, gx] = torch.log(bw / self.anchors[k % 3, 0])
        head[3, gy, gx] = torch.log(bh / self.anchors[k % 3, 1])
        head[4:, gy, gx] = -10.0
        head[4, gy, gx] = head[5 + k, gy, gx] = 10.0
        if self.distinct_scores:  # objectness sigmoid(1 + area / 500): a different score for every box size
            head[4, gy, gx] = 1.0 + bw * bh / 500


def random_dataset(seed: int, images: int = 60, num_classes: int = 3, dets_per_image: int = 12):
    """Integer boxes (so IoU ties occur), duplicated gts, difficult flags, empty images, jittered + random dets."""
    rng = np.random.default_rng(seed)
    truths, detections = [], []
    for _ in range(images):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 300, size=(n, 2))
        wh = rng.integers(4, 120, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
        labels = rng.integers(0, num_classes, size=n)
        if n and rng.random() < 0.3:  # an exact duplicate gt: argmax ties must go to the first one
            boxes, labels = np.concatenate([boxes, boxes[:1]]), np.concatenate([labels, labels[:1]])
        truths.append(GroundTruthBoxes(boxes, labels, rng.random(len(labels)) < 0.2))
        jitter = boxes[rng.integers(0, len(boxes), size=dets_per_image)] if len(boxes) else np.zeros((0, 4))
        jitter = jitter + rng.normal(0, 6, size=jitter.shape)
        noise_xy = rng.uniform(0, 300, size=(dets_per_image // 3, 2))
        noise = np.concatenate([noise_xy, noise_xy + rng.uniform(4, 120, size=noise_xy.shape)], axis=1)
        boxes_d = np.concatenate([jitter, noise])
        labels_d = np.where(rng.random(len(boxes_d)) < 0.8, 0, rng.integers(0, num_classes, len(boxes_d)))
        if len(jitter):
            labels_d[:len(jitter)] = np.where(rng.random(len(jitter)) < 0.85,
                                              labels[rng.integers(0, len(labels), len(jitter))], labels_d[:len(jitter)])
        dets = np.column_stack([boxes_d, rng.random(len(boxes_d)), labels_d])
        detections.append(dets)
    return detections, truths


def make_yolo(root: Path, images: int = 4, size: tuple[int, int] = (96, 128),
              classes: tuple[str, ...] = ("red", "blue"), splits: tuple[str, ...] = ("train", "val"),
              names_as_dict: bool = False, seed: int = 0) -> Path:
    """An Ultralytics-layout dataset under `root`: images/<split>/imgNNN.jpg, labels/<split>/imgNNN.txt (normalised
    class xc yc w h rows of coloured rectangles) and data.yaml (names as a list or an {id: name} dict). Returns the
    yaml's path."""
    rng = np.random.default_rng(seed)
    height, width = size
    for split in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            image = np.full((height, width, 3), 235, np.uint8)
            rows = []
            for k in range(1 + i % 2):
                cls = (i + k) % len(classes)
                w, h = int(rng.integers(width // 5, width // 3)), int(rng.integers(height // 5, height // 3))
                x1 = int(rng.integers(0, width // 2 - w)) + (width // 2 if k else 0)
                y1 = int(rng.integers(0, height - h))
                cv2.rectangle(image, (x1, y1), (x1 + w, y1 + h), COLOURS[classes[cls]], -1)
                rows.append(f"{cls} {(x1 + w / 2) / width:.6f} {(y1 + h / 2) / height:.6f} {w / width:.6f} "
                            f"{h / height:.6f}\n")
            cv2.imwrite(str(root / "images" / split / f"img{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (root / "labels" / split / f"img{i:03d}.txt").write_text("".join(rows))
    names = ("{" + ", ".join(f"{i}: {n}" for i, n in enumerate(classes)) + "}") if names_as_dict else list(classes)
    text = "".join(f"{split}: images/{split}\n" for split in splits) + f"names: {names}\n"
    (root / "data.yaml").write_text(text.replace("'", ""))
    return root / "data.yaml"
