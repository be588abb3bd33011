"""LossConfig: how YoloLoss (utils/train/loss.py) turns ground truths into positives and weighs its terms.

Torch-free, so that train.py's parser (`--loss`, --help, range errors) and TrainConfig's checks import no torch.
The defaults are the reference implementation's loss (bubbliiiing/yolov4-tiny-pytorch `nets/yolo_training.py`), the
loss of `--recipe default`; the other choices are YOLOv5's (ultralytics/yolov5 `utils/loss.py`, ComputeLoss).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from utils.common.cli import NumberRange, non_negative_float
from utils.common.errors import ConfigError

BOX_RATIO = 0.05  # the reference's box gain
ASSIGNERS = ("best_anchor", "ratio")
OBJ_TARGETS = ("one", "iou")
# The range of each numeric LossConfig field (a --loss value, or one read from a --config file or a checkpoint).
LOSS_RANGES: dict[str, NumberRange] = {
    "anchor_ratio": NumberRange(float, 1, 100, low_open=True), "ignore_threshold": non_negative_float,
    "box_gain": non_negative_float, "obj_gain": non_negative_float, "cls_gain": non_negative_float,
}


@dataclass
class LossConfig:
    """How ground truths become positives and how the terms are weighed. The defaults are the reference's loss.

    assign: "best_anchor" (the reference, Darknet: each box is a positive of its best width/height-IoU anchor only,
    in its centre cell; one positive per box, or two when that anchor is in two heads' masks) or "ratio" (YOLOv5:
    every anchor of every head whose width and height are both within a factor `anchor_ratio` of the box's).
    neighbour_cells: "ratio" also makes the two cells beside the centre cell nearest the centre positives (3 cells
    per matched anchor). Their predicted centres must reach into the next cell, so this needs
    ModelConfig.scale_x_y >= 2 (centre offset 2 sigmoid - 0.5 in (-0.5, 1.5), YOLOv5's and Scaled-YOLOv4's).
    obj_target: "one" (the reference) or "iou": a positive's objectness target is the CIoU of its predicted box with
    its ground truth (detached, clamped at 0), so the score ranks boxes by how well they fit (YOLOv5's gr = 1).
    ignore_threshold: negatives whose decoded box overlaps a ground truth of their image by IoU above this are left
    out of the objectness loss (the reference's 0.5); 1.0 or more leaves none out (YOLOv5).
    Gains: box = box_gain x sum over heads; obj = obj_gain x (h w / 416^2) x sum of HEAD_BALANCE[stride] x obj_head;
    cls = cls_gain x nc / 80 x sum over heads (the reference: 0.05, 5, 1).
    """

    assign: str = "best_anchor"
    anchor_ratio: float = 4.0
    neighbour_cells: bool = False
    obj_target: str = "one"
    ignore_threshold: float = 0.5
    box_gain: float = BOX_RATIO
    obj_gain: float = 5.0
    cls_gain: float = 1.0

    def __post_init__(self) -> None:
        if self.assign not in ASSIGNERS:
            raise ConfigError(f"--loss assign={self.assign!r}: use one of {', '.join(ASSIGNERS)}")
        if self.obj_target not in OBJ_TARGETS:
            raise ConfigError(f"--loss obj_target={self.obj_target!r}: use one of {', '.join(OBJ_TARGETS)}")
        if not isinstance(self.neighbour_cells, bool):
            raise ConfigError(f"--loss neighbour_cells={self.neighbour_cells!r}: use true or false")
        for name, allowed in LOSS_RANGES.items():
            setattr(self, name, allowed.check(getattr(self, name), f"--loss {name}"))
        if self.neighbour_cells and self.assign != "ratio":
            raise ConfigError("--loss neighbour_cells=true needs assign=ratio")

    @classmethod
    def from_dict(cls, values: dict | None) -> "LossConfig":
        """From a TrainConfig.loss dict; an unknown key is a ConfigError naming the known ones."""
        if not isinstance(values, (dict, type(None))):
            raise ConfigError(f"loss: expected a mapping of LossConfig fields, got {values!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values or {}) - set(known))
        if unknown:
            raise ConfigError(f"unknown --loss option(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
        return cls(**(values or {}))


LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))


def parse_loss(text: str) -> dict:
    """--loss 'assign=ratio,obj_gain=1' -> {'assign': 'ratio', 'obj_gain': 1.0}, typed and checked as LossConfig's
    fields (a ConfigError naming the key otherwise)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(LossConfig)}
    values: dict = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in types or not value:
            raise ConfigError(f"--loss {item.strip()!r}: give KEY=VALUE with KEY one of {', '.join(types)}")
        if types[key] is bool:
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"--loss {key}={value}: use true or false")
            values[key] = value.lower() in ("1", "true", "yes")
        elif types[key] is float:
            values[key] = LOSS_RANGES[key].check(value, f"--loss {key}")
        else:
            values[key] = value
    LossConfig(**values)  # the choices and the combinations
    return values
