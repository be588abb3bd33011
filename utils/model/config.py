"""The one model configuration shared by train.py, predict.py and eval.py and stored in every checkpoint."""
from __future__ import annotations

import dataclasses
import logging
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nets.attention import attention_name, attention_options
from nets.yolo import MAX_CLASSES, MAX_INPUT_SIDE, YoloBody, attention_place, check_input_size, head_layout
from utils.common.errors import ConfigError, MissingFileError
from utils.common.paths import check_user_path
from utils.common.text import printable
from utils.model.legacy import LEGACY_OPTION_FIELDS, upgrade_legacy_options  # noqa: F401 (their old home)

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
MODEL_DATA = ROOT / "model_data"
# Bounds of the stored fields (ModelConfig._check_bounds). A class name is a label, not a text: 200 characters is far
# above any dataset's; anchors are box sizes in input pixels, so none exceeds a few input sides.
MAX_CLASS_NAME = 200
MAX_ANCHORS = 64
MAX_ANCHOR_SIDE = 4 * MAX_INPUT_SIDE
SCALE_X_Y_RANGE = (1.0, 2.0)  # Darknet's grid sensitivity: 1.05-1.2 in its cfgs, 2.0 in YOLOv5's decoding


@dataclass
class ModelConfig:
    """Everything needed to rebuild a trained model: classes, heads, anchors (input pixels), masks, attention, size."""

    classes: list[str]
    # None: the defaults of the head count (nets.yolo.HEAD_LAYOUTS); stored resolved, so a checkpoint never depends on
    # them.
    anchors: list[list[float]] | None = None
    anchors_mask: list[list[int]] | None = None
    attention: str = "none"
    input_shape: list[int] = field(default_factory=lambda: [416, 416])  # height, width
    # Darknet's grid-sensitivity factor; 1.0 is the plain sigmoid(t) + grid decoding.
    scale_x_y: float = 1.0
    # Attention placement and block options (nets/yolo.py, nets/attention.py), stored complete (the block's defaults
    # filled in). The defaults are the reference layout; checkpoints written before these fields existed load with
    # them, and those with attention_reduction / cbam_kernel fields as these options (LEGACY_OPTION_FIELDS).
    attention_at: str = "neck"  # neck | backbone | both
    attention_options: dict[str, Any] = field(default_factory=dict)
    heads: int = 2  # 2: strides 32, 16 (yolov4-tiny); 3: + stride 8 (yolov4-tiny-3l)

    def __post_init__(self) -> None:
        self._check_bounds()
        self.attention = attention_name(self.attention)
        self.attention_at = attention_place(self.attention_at) if self.attention != "none" else "neck"
        self.attention_options = attention_options(self.attention, self.attention_options)
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ConfigError("the class list is empty; give --names FILE or annotations with objects")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"duplicate class names in {self.classes}")
        self.input_shape = parse_input_shape(self.input_shape)
        layout = head_layout(self.heads)
        self.anchors = [[float(w), float(h)] for w, h in (layout.anchors if self.anchors is None else self.anchors)]
        mask = layout.anchors_mask if self.anchors_mask is None else self.anchors_mask
        self.anchors_mask = [[int(i) for i in m] for m in mask]
        bad = [i for m in self.anchors_mask for i in m if not 0 <= i < len(self.anchors)]
        if bad and mask is layout.anchors_mask:  # default masks, too few anchors: usually --heads 3 with 6 anchors
            needed = len(layout.anchors)
            raise ConfigError(f"the default anchor masks of {self.heads} heads ({self.anchors_mask}) need {needed} "
                              f"anchors, but {len(self.anchors)} were given; give --anchors a file of {needed} "
                              f"(python -m utils.anchors --data <dataset> -n {needed})")
        if bad or len(self.anchors_mask) != len(self.strides):
            raise ConfigError(f"anchors_mask {self.anchors_mask} must hold one list of indices into the "
                              f"{len(self.anchors)} anchors per head of the model ({len(self.strides)} heads)")

    def _check_bounds(self) -> None:
        """Every stored field's type and size, before anything is built from it: a config comes from checkpoints,
        ONNX metadata and Darknet cfgs, which may be corrupt or hostile (300,000 class names would take 3.5 GB to
        build; a negative or NaN anchor gives no detections at all). A ConfigError names the field and the bound.
        None anchors or masks are the head count's defaults (checked by head_layout). Attention options are checked
        by their block (nets.attention.attention_options)."""
        _check_classes(self.classes)
        heads = len(head_layout(self.heads).strides)
        if self.anchors is not None:
            _check_anchors(self.anchors)
        masks = self.anchors_mask
        if masks is not None and (
                not isinstance(masks, (list, tuple)) or len(masks) != heads
                or not all(isinstance(m, (list, tuple)) and 1 <= len(m) <= MAX_ANCHORS for m in masks)
                or not all(_is_int(i) for m in masks for i in m)):
            raise ConfigError(f"anchors_mask {_cut(masks)} must hold one list of indices into the anchors per head "
                              f"of the model ({heads} heads), none empty")
        if isinstance(self.scale_x_y, bool) or not isinstance(self.scale_x_y, numbers.Real) or not (
                SCALE_X_Y_RANGE[0] <= self.scale_x_y <= SCALE_X_Y_RANGE[1]):  # also refuses nan
            raise ConfigError(f"scale_x_y {_cut(self.scale_x_y)}: give a number in [{SCALE_X_Y_RANGE[0]}, "
                              f"{SCALE_X_Y_RANGE[1]}] (1.0: plain sigmoid decoding)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def strides(self) -> tuple[int, ...]:
        """Output stride of each head, in the model's output order (nets.yolo.HEAD_LAYOUTS: 32, 16[, 8])."""
        return head_layout(self.heads).strides

    def used_anchors(self) -> np.ndarray:
        """The anchors [K, 2] some head uses, in index order (the stock masks leave anchor 0 out)."""
        used = sorted({i for mask in self.anchors_mask for i in mask})
        return np.asarray(self.anchors, dtype=np.float64)[used]

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint holding it loads with torch.load(weights_only=True)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = upgrade_legacy_options(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            LOGGER.warning("ignoring unknown model config fields %s (checkpoint from a newer version?)", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})



def _check_classes(classes: object) -> None:
    if not isinstance(classes, (list, tuple)):
        raise ConfigError(f"classes {_cut(classes)}: expected a list of class names")
    if len(classes) > MAX_CLASSES:
        raise ConfigError(f"{len(classes)} classes: at most {MAX_CLASSES} (each adds 3 output channels per head "
                          "cell); is this a real model file?")
    for name in classes:
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise ConfigError(f"class name {_cut(name)}: expected text")
        if not 0 < len(str(name).strip()) <= MAX_CLASS_NAME:
            raise ConfigError(f"class name {_cut(name)}: give 1 to {MAX_CLASS_NAME} characters")


def _check_anchors(anchors: object) -> None:
    pairs = anchors if isinstance(anchors, (list, tuple)) else []
    well_formed = 1 <= len(pairs) <= MAX_ANCHORS and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v <= MAX_ANCHOR_SIDE for v in pair)
        for pair in pairs)  # `0 < v <= max` is False for nan
    if not well_formed:
        raise ConfigError(f"anchors {_cut(anchors)}: give 1 to {MAX_ANCHORS} (width, height) pairs in input pixels, "
                          f"each a finite number in (0, {MAX_ANCHOR_SIDE}]")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _cut(value: object, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: a hostile field can be megabytes long."""
    return printable(repr(value), limit)


def build_model(config: ModelConfig) -> YoloBody:
    """The YoloBody that `config` describes (random weights)."""
    return YoloBody(config.anchors_mask, config.num_classes, config.attention, config.attention_at,
                    **config.attention_options)


def read_text_file(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of the user's `what` file (classes, anchors), or a UserError that names it and says `fix`."""
    check_user_path(path, f"{what} file")  # a FIFO or device would block the read forever
    if not path.is_file():
        raise MissingFileError(f"{what} file {path} not found; {fix}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} file {path} is not UTF-8 text ({err.reason} at byte {err.start}); {fix}") from None


def read_classes(path: str | Path) -> list[str]:
    """One class name per line; blank lines and surrounding spaces ignored."""
    path = Path(path)
    names = [line.strip() for line in read_text_file(path, "classes", "give a text file with one class name per line")
             .splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"classes file {path} holds no class names; write one name per line")
    return names


def read_anchors(path: str | Path) -> list[list[float]]:
    """Anchors as 'w,h, w,h, ...' (Darknet style, any whitespace or newlines), in input pixels."""
    path = Path(path)
    text = read_text_file(path, "anchors", "write 'w,h, w,h, ...' in input pixels").replace("\n", ",")
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"anchors file {path}: {err}; write 'w,h, w,h, ...' in input pixels") from err
    if not values or len(values) % 2:
        raise ConfigError(f"anchors file {path} must hold an even number of values (w,h pairs), found {len(values)}")
    return [values[i:i + 2] for i in range(0, len(values), 2)]


def parse_input_shape(value: str | int | Sequence[int]) -> list[int]:
    """The one parser of input sizes, for every command line and ModelConfig: '416' or 416 -> [416, 416];
    '320,416', '320x416' or [320, 416] -> [320, 416] (height, width). ConfigError unless both sides are positive
    multiples of 32."""
    parts = str(value).replace("x", ",").split(",") if isinstance(value, (str, int)) else list(value)
    try:
        sizes = [int(p) for p in parts if str(p).strip()]
    except (TypeError, ValueError):
        raise ConfigError(f"input shape {value!r} is not a whole number; give one size (416) or height,width "
                          "(320,416)") from None
    shape = sizes * 2 if len(sizes) == 1 else sizes
    if len(shape) != 2:
        raise ConfigError(f"input shape {value!r}: give one size (416) or height,width (320,416)")
    check_input_size(*shape)
    return shape
