"""Darknet interop for YOLOv4-tiny (2 heads, `yolov4-tiny.cfg`) and YOLOv4-tiny-3l (3 heads, `yolov4-tiny-3l.cfg`):
read and write `.cfg` + `.weights`, and load `yolov4-tiny.conv.29` for transfer.

The `.weights` format (pjreddie/AlexeyAB Darknet, also read by OpenCV's `cv2.dnn.readNetFromDarknet`):
a header of int32 major, minor, revision and a `seen` image counter, then float32 values, layer by layer in
cfg order. A conv with `batch_normalize=1` stores BN bias (beta), BN scale (gamma), running mean, running var,
then its weights [out, in, k, k]; a conv without BN (the 1x1 before each `[yolo]`) stores its bias then weights.

Only attention "none" maps onto Darknet: its yolov4-tiny has no SE/CBAM/ECA layers. Backbone transfer works for
every attention type because the convolutions are the same.
"""
from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nets.backbone import BasicConv
from nets.yolo import MAX_CLASSES, MAX_INPUT_SIDE, YoloBody
from utils.common.errors import ConfigError, MissingFileError, UserError
from utils.common.paths import check_user_path
from utils.model.config import ModelConfig, build_model, read_classes

LOGGER = logging.getLogger(__name__)

# The two-head model's convolutions in Darknet's order, and the cfg layer index of each (layers between are
# route/pool/upsample/yolo).
CONV_MODULES = (
    ["backbone.conv1", "backbone.conv2"]
    + [f"backbone.resblock_body{i}.conv{j}" for i in (1, 2, 3) for j in (1, 2, 3, 4)]
    + ["backbone.conv3", "conv_for_P5", "yolo_headP5.0", "yolo_headP5.1", "upsample.upsample.0",
       "yolo_headP4.0", "yolo_headP4.1"]
)
CONV_LAYER_INDEX = [0, 1, 2, 4, 5, 7, 10, 12, 13, 15, 18, 20, 21, 23, 26, 27, 28, 29, 32, 35, 36]
# yolov4-tiny-3l appends the stride-8 path: a 1x1 conv after `route -3` (the P4 head's 3x3 conv), upsample,
# `route -1,15` (the second CSP stage's 128-channel feature), a 3x3 conv and the head conv.
CONV_MODULES_3L = CONV_MODULES + ["upsample_P3.upsample.0", "yolo_headP3.0", "yolo_headP3.1"]
CONV_LAYER_INDEX_3L = CONV_LAYER_INDEX + [39, 42, 43]
NUM_BACKBONE_CONVS = 15
# Convs before the first class-dependent layer (yolo_headP5.1): what `darknet partial ... 29` keeps.
NUM_TRANSFER_CONVS = 17
WEIGHTS_HEADER = (0, 2, 5)  # what AlexeyAB's Darknet writes; (0, 2) means a 64-bit `seen`
SECTION_ALIASES = {"conv": "convolutional", "max": "maxpool", "network": "net", "local_avgpool": "avgpool"}


class DarknetFormatError(UserError, ValueError):
    """A .cfg or .weights file that does not describe this model, with what was expected and what to do."""


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def size(self) -> int:
        """Header bytes: 12, then 8 for a 64-bit `seen` or 4 for a 32-bit one."""
        return 12 + (8 if seen_is_64bit(self.major, self.minor) else 4)


def seen_is_64bit(major: int, minor: int) -> bool:
    """Darknet's rule (parser.c load_weights_upto, OpenCV darknet_io.cpp): versions from 0.2 store `seen` as int64."""
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def is_darknet_weights(path: str | Path) -> bool:
    """True for `x.weights` and Darknet's partial files `x.conv.N` (e.g. yolov4-tiny.conv.29)."""
    path = Path(path)
    return path.suffix == ".weights" or re.search(r"\.conv\.\d+$", path.name) is not None


# ----------------------------------------------------------------------------------------------------------- cfg
def parse_cfg(path: str | Path) -> list[dict[str, str]]:
    """Sections in file order, each {"type": name, key: value, "_line": line number}.

    Like Darknet's read_cfg: whitespace is removed everywhere in a line, and lines starting with '#' or ';' are
    comments.
    """
    path = check_user_path(path, "Darknet cfg")
    if not path.is_file():
        raise MissingFileError(f"Darknet cfg {path} not found; give --cfg with the .cfg that matches the weights")
    if path.stat().st_size > MAX_CFG_BYTES:
        raise DarknetFormatError(f"{path} is {path.stat().st_size} bytes, too large for a Darknet .cfg (yolov4-tiny's "
                                 "is about 3 KB); give --cfg the .cfg that matches the weights")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DarknetFormatError(f"{path} is not a text file ({err.reason} at byte {err.start}); give --cfg the "
                                 "Darknet .cfg that matches the weights") from None
    sections: list[dict[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].lower()
            sections.append({"type": SECTION_ALIASES.get(name, name), "_line": str(number)})
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][key] = value
        else:
            raise DarknetFormatError(f"{path}:{number}: cannot parse {raw.strip()!r}; expected [section] or key=value")
    if not sections or sections[0]["type"] != "net":
        raise DarknetFormatError(f"{path}: a Darknet cfg starts with a [net] section")
    return sections


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _net_section(config: ModelConfig) -> dict[str, str]:
    """[net] with the stock yolov4-tiny training settings, so the cfg also trains in Darknet."""
    max_batches = max(6000, 2000 * config.num_classes)  # AlexeyAB's rule for custom datasets
    return {"type": "net", "batch": "64", "subdivisions": "1", "width": str(config.input_shape[1]),
            "height": str(config.input_shape[0]), "channels": "3", "momentum": "0.9", "decay": "0.0005",
            "angle": "0", "saturation": "1.5", "exposure": "1.5", "hue": ".1", "learning_rate": "0.00261",
            "burn_in": "1000", "max_batches": str(max_batches), "policy": "steps",
            "steps": f"{max_batches * 8 // 10},{max_batches * 9 // 10}", "scales": ".1,.1"}


def _conv(filters: int, size: int, stride: int = 1) -> dict[str, str]:
    return {"type": "convolutional", "batch_normalize": "1", "filters": str(filters), "size": str(size),
            "stride": str(stride), "pad": "1", "activation": "leaky"}


def _head_conv(mask: list[int], config: ModelConfig) -> dict[str, str]:
    filters = len(mask) * (5 + config.num_classes)
    return {"type": "convolutional", "size": "1", "stride": "1", "pad": "1", "filters": str(filters),
            "activation": "linear"}


def _yolo(mask: list[int], config: ModelConfig) -> dict[str, str]:
    anchors = ", ".join(f"{_number(w)},{_number(h)}" for w, h in config.anchors)
    return {"type": "yolo", "mask": ",".join(map(str, mask)), "anchors": anchors,
            "classes": str(config.num_classes), "num": str(len(config.anchors)), "jitter": ".3",
            "scale_x_y": _number(config.scale_x_y), "cls_normalizer": "1.0", "iou_normalizer": "0.07",
            "iou_loss": "ciou", "ignore_thresh": ".7", "truth_thresh": "1", "random": "0", "resize": "1.5",
            "nms_kind": "greedynms", "beta_nms": "0.6"}


def _csp_stage(channels: int) -> list[dict[str, str]]:
    """Darknet layers of one ResblockBody: conv, half split, two convs, concat, 1x1, concat with input, pool."""
    return [_conv(channels, 3), {"type": "route", "layers": "-1", "groups": "2", "group_id": "1"},
            _conv(channels // 2, 3), _conv(channels // 2, 3), {"type": "route", "layers": "-1,-2"},
            _conv(channels, 1), {"type": "route", "layers": "-6,-1"}, {"type": "maxpool", "size": "2", "stride": "2"}]


def cfg_sections(config: ModelConfig) -> list[dict[str, str]]:
    """The yolov4-tiny cfg for `config` ([net] first, then the 38 layers), or with three heads yolov4-tiny-3l's (45
    layers); the reference for reading and writing."""
    mask_p5, mask_p4 = config.anchors_mask[:2]
    sections = ([_net_section(config), _conv(32, 3, 2), _conv(64, 3, 2)]
                + _csp_stage(64) + _csp_stage(128) + _csp_stage(256)
                + [_conv(512, 3), _conv(256, 1), _conv(512, 3), _head_conv(mask_p5, config), _yolo(mask_p5, config),
                   {"type": "route", "layers": "-4"}, _conv(128, 1), {"type": "upsample", "stride": "2"},
                   {"type": "route", "layers": "-1,23"}, _conv(256, 3), _head_conv(mask_p4, config),
                   _yolo(mask_p4, config)])
    if len(config.anchors_mask) == 3:  # yolov4-tiny-3l: from layer 35 (P4's 3x3) onto layer 15 (stage 2's feature)
        mask_p3 = config.anchors_mask[2]
        sections += [{"type": "route", "layers": "-3"}, _conv(64, 1), {"type": "upsample", "stride": "2"},
                     {"type": "route", "layers": "-1,15"}, _conv(128, 3), _head_conv(mask_p3, config),
                     _yolo(mask_p3, config)]
    return sections


def model_name(config: ModelConfig) -> str:
    """Darknet's name of the network `config` describes, for messages."""
    return "yolov4-tiny-3l" if len(config.anchors_mask) == 3 else "yolov4-tiny"


def format_cfg(sections: list[dict[str, str]]) -> str:
    """Sections -> cfg text (keys starting with '_' are bookkeeping and are not written)."""
    blocks = []
    for section in sections:
        lines = [f"[{section['type']}]"] + [f"{k}={v}" for k, v in section.items() if k != "type" and k[0] != "_"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_cfg(config: ModelConfig, path: str | Path) -> Path:
    """Write the yolov4-tiny .cfg for `config` (classes, anchors, masks, filters=(5+nc)*3, width/height)."""
    _require_plain(config.attention)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_cfg(cfg_sections(config)), encoding="utf-8")
    return path


def _ints(section: dict[str, str], key: str, default: int | None = None) -> list[int]:
    value = section.get(key)
    if value is None:
        if default is None:
            raise KeyError(key)
        return [default]
    return [int(float(v)) for v in value.split(",") if v]


def _layer_signature(index: int, section: dict[str, str]) -> tuple:
    """What a layer computes, with Darknet's defaults filled in; hyper-parameters (jitter, ...) are left out."""
    kind = section["type"]

    def get(key: str, default: int) -> int:
        return _ints(section, key, default)[0]

    if kind == "convolutional":
        size = get("size", 1)
        padding = size // 2 if get("pad", 0) else get("padding", 0)
        return (kind, get("filters", 1), size, get("stride", 1), padding, get("groups", 1),
                get("batch_normalize", 0), section.get("activation", "logistic"))
    if kind == "route":
        layers = tuple(i if i >= 0 else index + i for i in _ints(section, "layers"))
        return kind, layers, get("groups", 1), get("group_id", 0)
    if kind == "maxpool":
        stride = get("stride", 1)
        return kind, get("size", stride), stride
    if kind == "upsample":
        return kind, get("stride", 2)
    if kind == "yolo":
        return kind, tuple(_ints(section, "mask")), get("classes", 20)
    return (kind,)


def check_topology(sections: list[dict[str, str]], config: ModelConfig, path: str | Path) -> None:
    """Raise DarknetFormatError unless the cfg's layers are yolov4-tiny's for `config`, naming the first difference."""
    layers, expected = sections[1:], cfg_sections(config)[1:]
    for index, (got, want) in enumerate(zip(layers, expected, strict=False)):  # lengths compared below
        try:
            got_sig = _layer_signature(index, got)
        except (KeyError, ValueError) as err:
            raise DarknetFormatError(f"{path}:{got['_line']}: layer {index} [{got['type']}] has a missing or "
                                     f"non-numeric value ({err})") from err
        want_sig = _layer_signature(index, want)
        if got_sig != want_sig:
            raise DarknetFormatError(
                f"{path}:{got['_line']}: layer {index} is {got_sig}, but {model_name(config)} needs {want_sig}; "
                f"only the stock yolov4-tiny.cfg and yolov4-tiny-3l.cfg layouts (any classes, anchors and input "
                f"size) can be loaded")
    if len(layers) != len(expected):
        raise DarknetFormatError(f"{path}: {len(layers)} layers, {model_name(config)} has {len(expected)}; "
                                 f"only the stock yolov4-tiny.cfg and yolov4-tiny-3l.cfg layouts can be loaded")


def _class_names(classes: list[str] | str | Path | None, count: int, cfg_path: Path) -> list[str]:
    if classes is None:
        return [f"class{i}" for i in range(count)]
    names = read_classes(classes) if isinstance(classes, (str, Path)) else list(classes)
    if len(names) != count:
        raise DarknetFormatError(f"{cfg_path} has classes={count} but {len(names)} class names were given; "
                                 f"give the names file (one per line) that the weights were trained with")
    return names


def config_from_cfg(sections: list[dict[str, str]], path: str | Path,
                    classes: list[str] | str | Path | None = None) -> ModelConfig:
    """ModelConfig from a parsed cfg: [net] width/height and the two (yolov4-tiny) or three (yolov4-tiny-3l) [yolo]
    sections (classes, anchors, masks, scale_x_y). The yolo sections must agree on everything but the mask, since
    ModelConfig holds one of each."""
    path = Path(path)
    yolos = [s for s in sections if s["type"] == "yolo"]
    if len(yolos) not in (2, 3):
        raise DarknetFormatError(f"{path} has {len(yolos)} [yolo] sections; yolov4-tiny has 2, yolov4-tiny-3l 3")
    if any(y.get("new_coords", "0") != "0" for y in yolos):
        raise DarknetFormatError(f"{path}: new_coords=1 (scaled-YOLOv4 decoding) is not supported; remove it")
    for key, default in (("classes", "20"), ("anchors", ""), ("scale_x_y", "1")):
        values = {y.get(key, default) for y in yolos}
        if len(values) != 1:
            raise DarknetFormatError(f"{path}: the [yolo] sections differ in {key} ({_clip(values)}); "
                                     f"this model shares one {key} between its heads")
    net = sections[0]
    check_sizes(net, yolos, path)  # before anything is built from these numbers
    try:
        anchors = [float(v) for v in yolos[0].get("anchors", "").split(",") if v]
        return ModelConfig(
            classes=_class_names(classes, int(yolos[0].get("classes", "20")), path),
            anchors=[anchors[i:i + 2] for i in range(0, len(anchors), 2)],
            anchors_mask=[_ints(y, "mask") for y in yolos], attention="none", heads=len(yolos),
            input_shape=[int(net.get("height", "416")), int(net.get("width", "416"))],
            scale_x_y=float(yolos[0].get("scale_x_y", "1")))
    except (KeyError, ValueError) as err:
        if isinstance(err, DarknetFormatError):
            raise
        raise DarknetFormatError(f"{path}: [net] or [yolo] values do not describe a yolov4-tiny model: {err}") from err


MAX_SIDE = MAX_INPUT_SIDE  # the model's bounds (nets.yolo), which ModelConfig checks too: MAX_CLASSES, MAX_INPUT_SIDE
MAX_CFG_BYTES = 1 << 20  # a yolov4-tiny.cfg is about 3 KB


def _clip(values, limit: int = 60) -> str:
    text = ", ".join(sorted(map(str, values)))
    return text if len(text) <= limit else text[:limit] + "..."


def _int_in(text: str, low: int, high: int, what: str, path: Path) -> int:
    """int(text) when low <= it <= high, else DarknetFormatError naming the value's meaning and the limits."""
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise DarknetFormatError(f"{path}: {what}={text[:30]!r} is not a number") from None
    if not low <= value <= high:
        raise DarknetFormatError(f"{path}: {what}={value} is outside {low}..{high}; fix the cfg (is it a "
                                 "yolov4-tiny cfg?)")
    return value


def check_sizes(net: dict[str, str], yolos: list[dict[str, str]], path: str | Path) -> None:
    """Validate every number that sizes an allocation (classes, width/height, anchors, masks) before any list,
    tensor or model is built from it: one DarknetFormatError line per absurd value."""
    path = Path(path)
    _int_in(yolos[0].get("classes", "20"), 1, MAX_CLASSES, "[yolo] classes", path)
    for key in ("width", "height"):
        side = _int_in(net.get(key, "416"), 32, MAX_SIDE, f"[net] {key}", path)
        if side % 32:
            raise DarknetFormatError(f"{path}: [net] {key}={side} is not a multiple of 32 (the model's stride)")
    values = [v for v in yolos[0].get("anchors", "").split(",") if v.strip()]
    if len(values) > 2 * 64 or len(values) % 2:
        raise DarknetFormatError(f"{path}: [yolo] anchors holds {len(values)} numbers; it needs w,h pairs "
                                 "(yolov4-tiny: 6 pairs)")
    for value in values:
        try:
            number = float(value)
        except ValueError:
            raise DarknetFormatError(f"{path}: [yolo] anchors holds {value[:30]!r}, not a number") from None
        if not 0 < number <= 100 * MAX_SIDE:
            raise DarknetFormatError(f"{path}: [yolo] anchor value {number} is not a positive size in pixels")
    for yolo in yolos:
        mask = [v for v in yolo.get("mask", "").split(",") if v.strip()]
        if not 1 <= len(mask) <= len(values) // 2:
            raise DarknetFormatError(f"{path}: [yolo] mask has {len(mask)} entries for {len(values) // 2} anchors")
        for entry in mask:
            _int_in(entry, 0, len(values) // 2 - 1, "[yolo] mask entry", path)


def read_darknet_cfg(cfg_path: str | Path, classes: list[str] | str | Path | None = None) -> ModelConfig:
    """Parse and check a yolov4-tiny or yolov4-tiny-3l cfg; its ModelConfig (attention "none")."""
    sections = parse_cfg(cfg_path)
    config = config_from_cfg(sections, cfg_path, classes)
    check_topology(sections, config, cfg_path)
    return config


# ------------------------------------------------------------------------------------------------------- weights
def _require_plain(attention: str) -> None:
    if attention != "none":
        raise ConfigError(
            f"a model with attention {attention!r} cannot be written or read as Darknet .cfg/.weights: Darknet's "
            f"yolov4-tiny has no SE/CBAM/ECA layers. Keep the PyTorch checkpoint for it, or train with "
            f"--attention none for Darknet deployment (backbone transfer with load_darknet_backbone works for all)")


def darknet_convs(model: YoloBody) -> list[list[torch.Tensor]]:
    """Per conv, in Darknet order, the tensors as the .weights file stores them.

    BN conv: [bn.bias (beta), bn.weight (gamma), running_mean, running_var, conv.weight]; plain conv: [bias, weight].
    """
    layers = []
    for name in CONV_MODULES_3L if len(model.strides) == 3 else CONV_MODULES:
        module = model.get_submodule(name)
        if isinstance(module, BasicConv):
            bn = module.bn
            layers.append([bn.bias, bn.weight, bn.running_mean, bn.running_var, module.conv.weight])
        elif isinstance(module, nn.Conv2d):
            layers.append([module.bias, module.weight])
        else:
            raise TypeError(f"{name} is a {type(module).__name__}; the Darknet mapping expects a conv here")
    return layers


def _count(layers: list[list[torch.Tensor]]) -> int:
    return sum(t.numel() for layer in layers for t in layer)


def read_weights(path: str | Path) -> tuple[WeightsHeader, np.ndarray]:
    """Header and all float32 values of a Darknet .weights / .conv.N file."""
    path = check_user_path(path, "Darknet weights")
    if not path.is_file():
        raise MissingFileError(f"Darknet weights {path} not found; check the path")
    data = path.read_bytes()
    if len(data) < 16:
        raise DarknetFormatError(f"{path} is {len(data)} bytes, shorter than a Darknet header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<3i", data)
    wide = seen_is_64bit(major, minor)
    (seen,) = struct.unpack_from("<Q" if wide else "<I", data, 12)
    header = WeightsHeader(major, minor, revision, seen)
    body = len(data) - header.size
    if body % 4:
        raise DarknetFormatError(f"{path}: {body} bytes after the header is not a whole number of float32 values; "
                                 f"the file is truncated or not a Darknet weights file")
    return header, np.frombuffer(data, dtype="<f4", offset=header.size).astype(np.float32)


@torch.no_grad()
def _fill(layers: list[list[torch.Tensor]], values: np.ndarray) -> None:
    offset = 0
    for layer in layers:
        for tensor in layer:
            chunk = values[offset:offset + tensor.numel()]
            tensor.copy_(torch.from_numpy(chunk).view_as(tensor))
            offset += tensor.numel()


def write_weights(model: YoloBody, path: str | Path, num_convs: int | None = None, seen: int = 0,
                  version: tuple[int, int, int] = WEIGHTS_HEADER) -> Path:
    """Write the first `num_convs` convs (all by default) as Darknet .weights; `version` picks the `seen` width."""
    layers = darknet_convs(model)[:num_convs]
    major, minor, revision = version
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<3i", major, minor, revision))
        handle.write(struct.pack("<Q" if seen_is_64bit(major, minor) else "<I", seen))
        for layer in layers:
            for tensor in layer:
                handle.write(tensor.detach().cpu().float().numpy().astype("<f4").tobytes())
    return path


# ---------------------------------------------------------------------------------------------------- public API
def load_darknet(cfg_path: str | Path, weights_path: str | Path,
                 classes: list[str] | str | Path | None = None) -> tuple[YoloBody, ModelConfig]:
    """A yolov4-tiny .cfg + .weights as (YoloBody in eval mode, ModelConfig with the cfg's scale_x_y).

    `classes` is a list of names or a names file (one per line); without it the names are class0, class1, ...
    """
    config = read_darknet_cfg(cfg_path, classes)
    model = build_model(config)
    layers = darknet_convs(model)
    header, values = read_weights(weights_path)
    expected = _count(layers)
    if values.size != expected:
        hint = ("the file is truncated (an interrupted download?), or it is a partial .conv.N file, which is for "
                "transfer learning: train.py --weights" if values.size < expected else
                "the file is longer: it belongs to another cfg (other classes or network); give the matching --cfg")
        raise DarknetFormatError(f"{weights_path}: expected {expected} float values for {model_name(config)} with "
                                 f"{config.num_classes} classes ({cfg_path}), found {values.size}; {hint}")
    _fill(layers, values)
    LOGGER.info("loaded %s (Darknet %d.%d.%d, seen %d) with %s", weights_path, header.major, header.minor,
                header.revision, header.seen, cfg_path)
    return model.eval(), config


def _full_file_classes(found: int, model: YoloBody) -> int | None:
    """The class count for which a complete .weights file of this model's network (yolov4-tiny, or -3l for three
    heads) holds `found` values, else None."""
    heads = model.head_output_convs()
    class_dependent = {id(t) for conv in heads for t in (conv.weight, conv.bias)}
    fixed = sum(t.numel() for layer in darknet_convs(model) for t in layer if id(t) not in class_dependent)
    anchors = [h.out_channels // (5 + model.num_classes) for h in heads]
    # weights + bias per output
    per_class_slot = sum(a * (h.in_channels + 1) for a, h in zip(anchors, heads, strict=True))
    extra = found - fixed
    if extra <= 0 or extra % per_class_slot or extra // per_class_slot <= 5:
        return None
    return extra // per_class_slot - 5


def load_darknet_backbone(model: YoloBody, weights_path: str | Path) -> int:
    """Load the class-independent convs a Darknet file holds into `model`; returns how many convs were loaded.

    `yolov4-tiny.conv.29` (made by `darknet partial ... 29`) holds cfg layers 0-28: the 15 backbone convs plus
    conv_for_P5 and the P5 head's 3x3, so 17 convs load, exactly as Darknet itself loads it. A file cut after the
    backbone (.conv.27) loads only model.backbone. A complete yolov4-tiny .weights file with any class count loads
    its first 17 convs. Works for every attention type (the attention blocks have no Darknet counterpart and keep
    their initialisation).
    """
    layers = darknet_convs(model)[:NUM_TRANSFER_CONVS]
    _, values = read_weights(weights_path)
    boundaries = np.cumsum([_count([layer]) for layer in layers])
    matches = np.flatnonzero(boundaries == values.size)
    if matches.size:
        count = int(matches[0]) + 1
    elif _full_file_classes(values.size, model) is not None:
        count = NUM_TRANSFER_CONVS
        LOGGER.info("%s is a complete yolov4-tiny file for %d classes; loading its first %d convs", weights_path,
                    _full_file_classes(values.size, model), count)
    else:
        raise DarknetFormatError(
            f"{weights_path}: found {values.size} float values, which is no whole-layer prefix of yolov4-tiny: "
            f"expected {boundaries[NUM_BACKBONE_CONVS - 1]} (the 15 backbone convs), {boundaries[-1]} (17 convs, "
            f"yolov4-tiny.conv.29), another layer boundary below that, or a complete yolov4-tiny .weights file; "
            f"the file is truncated or belongs to another network")
    flat = values[:boundaries[count - 1]]
    _fill(layers[:count], flat)
    LOGGER.info("loaded %d Darknet conv layers from %s", count, weights_path)
    return count


def export_darknet(model: YoloBody, config: ModelConfig, out_stem: str | Path) -> tuple[Path, Path]:
    """Write `out_stem`.cfg and `out_stem`.weights (Darknet 0.2.5 header, seen 0); load_darknet reads them back
    bit-exactly, and so do Darknet and OpenCV's readNetFromDarknet."""
    _require_plain(config.attention)
    _require_plain(model.attention)
    if model.num_classes != config.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but the config {config.num_classes}")
    stem = Path(out_stem)
    if stem.suffix in (".cfg", ".weights"):
        stem = stem.with_suffix("")
    cfg_path = write_cfg(config, stem.parent / f"{stem.name}.cfg")
    weights_path = write_weights(model, stem.parent / f"{stem.name}.weights")
    return cfg_path, weights_path
