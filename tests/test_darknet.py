"""Darknet .cfg/.weights interop, checked against an independent reader (OpenCV 4.x cv2.dnn.readNetFromDarknet).

Parity tolerance: max |ours - OpenCV| <= 1e-3 * max(1, max |ours|) over each head's raw outputs (and over the
decoded centres, objectness and log sizes). Besides float rounding the engines differ in BatchNorm's epsilon:
PyTorch and AlexeyAB's Darknet add 1e-5 to the variance, OpenCV's Darknet importer 1e-6; with these random weights
that alone moves the heads by ~2e-3 on outputs of magnitude ~8 (~3e-4 relative).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tests.paths import DARKNET_CFG, needs_shared
from tests.synthetic import write_partial
from utils.model.config import ModelConfig, build_model
from utils.model.darknet import (
    CONV_LAYER_INDEX,
    DarknetFormatError,
    cfg_sections,
    darknet_convs,
    export_darknet,
    format_cfg,
    is_darknet_weights,
    load_darknet,
    load_darknet_backbone,
    parse_cfg,
    read_darknet_cfg,
    read_weights,
    write_cfg,
    write_weights,
)
from utils.model.decode import decode_outputs

needs_opencv_darknet = pytest.mark.skipif(not hasattr(cv2.dnn, "readNetFromDarknet"),
                                          reason=f"OpenCV {cv2.__version__} has no Darknet reader (removed in 5.x)")
TOLERANCE = 1e-3
# Parity with one of our trained checkpoints (attention "none"): set this variable to its path to add the case.
CHECKPOINT_ENV = "YOLO_DARKNET_PARITY_CHECKPOINT"


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random convs, BN affine and BN running stats, with activations kept near unit scale.

    He-initialised convs and random gamma/beta; the running stats are first set to what each BN actually sees on a
    random batch (so no layer explodes or vanishes), then perturbed so mean/var are not the batch's exact values.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0, (2 / fan_in) ** 0.5, generator=gen)
            if conv.bias is not None:
                conv.bias.normal_(0, 0.5, generator=gen)
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(0, 0.2, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the stats exactly
        model.train()(torch.rand(2, 3, 128, 128, generator=gen))
        for bn in bns:
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4, generator=gen))
            bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn(bn.num_features, generator=gen))
            bn.momentum = 0.1
            bn.num_batches_tracked.zero_()
    return model.eval()


def random_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """A model with calibrated random weights (for output parity)."""
    torch.manual_seed(seed)
    return randomize_(build_model(config), seed)


def scrambled_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """A model whose every float tensor (BN running stats included) is random: cheap, for storage tests."""
    model = build_model(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen).abs() if "running_var" in key else
                             torch.randn(tensor.shape, generator=gen))
    return model.eval()


def source_model(source: str) -> tuple[nn.Module, ModelConfig]:
    """The weights a parity test runs on: random, or one of our trained checkpoints named by CHECKPOINT_ENV."""
    if source == "random":
        config = ModelConfig(classes=["cat", "dog", "fox"], input_shape=[256, 320], anchors_mask=[[3, 4, 5], [0, 1, 2]])
        return random_model(config, seed=1), config
    path = os.environ.get(CHECKPOINT_ENV)
    if not path:
        pytest.skip(f"set {CHECKPOINT_ENV} to one of our checkpoints (attention none) to check trained weights")
    from utils.model.checkpoint import load_model
    return load_model(path)


def opencv_outputs(cfg: Path, weights: Path, x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """OpenCV's raw head outputs (the conv before each [yolo], found by layer name) and its [yolo] outputs."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    names = net.getLayerNames()
    yolo_names = list(net.getUnconnectedOutLayersNames())
    yolo_indices = [int(name.rsplit("_", 1)[1]) for name in yolo_names]  # OpenCV names layers <kind>_<cfg index>
    head_names = [f"conv_{i - 1}" for i in yolo_indices]
    assert set(head_names) <= set(names), names
    net.setInput(x.numpy())
    outputs = net.forward(head_names + yolo_names)
    return list(outputs[:len(head_names)]), list(outputs[len(head_names):])


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.abs(ours).max()))
    error = float(np.abs(ours - theirs).max())
    assert error <= TOLERANCE * scale, f"{what}: max |diff| {error:.3g} exceeds {TOLERANCE} x {scale:.3g}"


def assert_decoding_matches(ours: torch.Tensor, yolo_outputs: list[np.ndarray], config: ModelConfig,
                            input_hw: tuple[int, int]) -> None:
    """Our decode_outputs (x1y1x2y2 input px) vs OpenCV's [yolo] rows (cx, cy, w, h normalised, objectness).

    OpenCV orders rows (y, x, anchor); ours (anchor, y, x).
    """
    height, width = input_hw
    start = 0
    for theirs, mask in zip(yolo_outputs, config.anchors_mask, strict=True):
        cells = theirs.shape[0] // len(mask)
        block = ours[0, start:start + theirs.shape[0]].view(len(mask), cells, -1).transpose(0, 1).reshape(
            theirs.shape[0], -1)
        start += theirs.shape[0]
        xy = (block[:, :2] + block[:, 2:4]) / 2
        wh = block[:, 2:4] - block[:, :2]
        norm = torch.tensor([width, height], dtype=torch.float32)
        mine = torch.cat((xy / norm, block[:, 4:5]), dim=1).numpy()
        assert_close(mine, theirs[:, [0, 1, 4]], f"decoded centres and objectness, mask {mask}")
        # w = anchor * exp(tw): compare log(w), which carries the raw output's error unamplified
        assert_close((wh / norm).log().numpy(), np.log(theirs[:, 2:4]), f"decoded log sizes, mask {mask}")


def check_parity(model: nn.Module, config: ModelConfig, cfg: Path, weights: Path) -> None:
    height, width = config.input_shape
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3))
    heads, yolos = opencv_outputs(cfg, weights, x)
    with torch.no_grad():
        ours = model.eval()(x)
    for mine, theirs, mask in zip(ours, heads, config.anchors_mask, strict=True):
        assert mine.shape == theirs.shape
        assert 0.3 < float(mine.std()) < 30, "random weights should give outputs of a sane scale"
        assert_close(mine.numpy(), theirs, f"raw head output, mask {mask}")
    assert_decoding_matches(decode_outputs(ours, config), yolos, config, (height, width))


@needs_shared
@needs_opencv_darknet
def test_opencv_parity_stock_cfg(tmp_path):
    """Weights we write for the stock yolov4-tiny.cfg read by OpenCV give our raw heads and, with the cfg's
    scale_x_y = 1.05, our decoded boxes."""
    config = read_darknet_cfg(DARKNET_CFG)
    assert config.scale_x_y == pytest.approx(1.05)
    model = random_model(config)
    weights = write_weights(model, tmp_path / "random.weights")
    check_parity(model, config, DARKNET_CFG, weights)
    loaded, loaded_config = load_darknet(DARKNET_CFG, weights)
    assert loaded_config == config
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))


@needs_opencv_darknet
@pytest.mark.parametrize("source", ["random", "checkpoint"])
def test_opencv_parity_exported_cfg(tmp_path, source):
    model, config = source_model(source)
    cfg, weights = export_darknet(model, config, tmp_path / "exported")
    check_parity(model, config, cfg, weights)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Every state_dict tensor bit-equal, except BN's num_batches_tracked (a training counter Darknet has no
    field for; a loaded model starts it at 0)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(sa[key], sb[key]), key


def test_round_trip_is_exact(tmp_path):
    config = ModelConfig(classes=["a", "b", "c"], anchors=[[12, 16], [19, 36], [40, 28], [36, 75], [76, 55],
                                                             [72.5, 146]], input_shape=[320, 416], scale_x_y=1.1)
    model = scrambled_model(config, seed=4)
    cfg, weights = export_darknet(model, config, tmp_path / "model.weights")
    assert (cfg.name, weights.name) == ("model.cfg", "model.weights")
    loaded, loaded_config = load_darknet(cfg, weights, classes=config.classes)
    assert loaded_config == config
    assert not loaded.training
    assert_same_state(model, loaded)
    again = export_darknet(loaded, loaded_config, tmp_path / "again")
    assert again[0].read_text() == cfg.read_text() and again[1].read_bytes() == weights.read_bytes()


def test_class_names_from_argument_or_file(tmp_path):
    config = ModelConfig(classes=["a", "b"])
    cfg, weights = export_darknet(scrambled_model(config), config, tmp_path / "m")
    names = tmp_path / "m.names"
    names.write_text("cat\ndog\n")
    assert load_darknet(cfg, weights, classes=names)[1].classes == ["cat", "dog"]
    assert load_darknet(cfg, weights)[1].classes == ["class0", "class1"]
    with pytest.raises(DarknetFormatError, match="classes=2 but 3 class names"):
        load_darknet(cfg, weights, classes=["a", "b", "c"])


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_wrong_length_names_expected_and_found(tmp_path, change):
    config = ModelConfig(classes=["a", "b"])
    model = build_model(config)
    cfg, weights = export_darknet(model, config, tmp_path / "m")
    expected = sum(t.numel() for layer in darknet_convs(model) for t in layer)
    data = weights.read_bytes()
    weights.write_bytes(data[:-400] if change == "truncate" else data + bytes(8))
    found = expected - 100 if change == "truncate" else expected + 2
    with pytest.raises(DarknetFormatError, match=f"expected {expected} float values .* found {found}"):
        load_darknet(cfg, weights)


def test_partial_float_and_short_header_are_errors(tmp_path):
    config = ModelConfig(classes=["a"])
    cfg, weights = export_darknet(build_model(config), config, tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:-2])
    with pytest.raises(DarknetFormatError, match="not a whole number of float32"):
        load_darknet(cfg, weights)
    weights.write_bytes(bytes(10))
    with pytest.raises(DarknetFormatError, match="shorter than a Darknet header"):
        load_darknet(cfg, weights)


@pytest.mark.parametrize("version, header_bytes", [((0, 1, 0), 16), ((0, 2, 5), 20), ((1, 0, 0), 20),
                                                   ((1000, 2, 0), 16)])
def test_seen_32_and_64_bit_headers(tmp_path, version, header_bytes):
    """(major*10 + minor) >= 2 with major, minor < 1000 means a 64-bit `seen`, else 32-bit (Darknet, OpenCV)."""
    config = ModelConfig(classes=["a"])
    model = scrambled_model(config, seed=2)
    cfg = write_cfg(config, tmp_path / "m.cfg")
    seen = 123_456_789_012 if header_bytes == 20 else 3_000_000_000
    weights = write_weights(model, tmp_path / "m.weights", seen=seen, version=version)
    header, values = read_weights(weights)
    assert (header.major, header.minor, header.revision, header.seen) == (*version, seen)
    assert weights.stat().st_size == header_bytes + 4 * values.size
    assert_same_state(model, load_darknet(cfg, weights)[0])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed_prefixes(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    """Top-level module names (backbone split one level deeper) whose tensors changed."""
    changed = set()
    for key, value in model.state_dict().items():
        if not torch.equal(before[key], value):
            changed.add(key.split(".")[0] if not key.startswith("backbone") else "backbone")
    return changed


@pytest.mark.parametrize("cutoff, convs, loaded_modules", [
    (27, 15, {"backbone"}),
    (29, 17, {"backbone", "conv_for_P5", "yolo_headP5"}),
])
@pytest.mark.parametrize("attention", ["none", "cbam"])
def test_backbone_only_file(tmp_path, cutoff, convs, loaded_modules, attention):
    """A `darknet partial ... N` file loads its layers only, into a model with other classes and any attention."""
    source = scrambled_model(ModelConfig(classes=[str(i) for i in range(80)]), seed=5)
    path = write_partial(source, tmp_path / f"yolov4-tiny.conv.{cutoff}", cutoff=cutoff)
    assert is_darknet_weights(path)
    target = build_model(ModelConfig(classes=["a", "b"], attention=attention))
    before = snapshot(target)
    assert load_darknet_backbone(target, path) == convs
    assert changed_prefixes(before, target) == loaded_modules
    assert_same_state(source.backbone, target.backbone)
    assert torch.equal(target.yolo_headP5[1].weight, before["yolo_headP5.1.weight"])  # class-dependent: untouched
    if cutoff == 29:
        assert torch.equal(source.yolo_headP5[0].conv.weight, target.yolo_headP5[0].conv.weight)


def test_backbone_from_full_weights_of_other_classes(tmp_path):
    source = scrambled_model(ModelConfig(classes=[str(i) for i in range(80)]), seed=6)
    path = write_weights(source, tmp_path / "coco.weights")
    target = build_model(ModelConfig(classes=["a"]))
    assert load_darknet_backbone(target, path) == 17
    assert_same_state(source.conv_for_P5, target.conv_for_P5)


def test_backbone_file_of_wrong_length(tmp_path):
    source = build_model(ModelConfig(classes=["a"]))
    path = write_partial(source, tmp_path / "x.conv.29")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DarknetFormatError, match=r"found \d+ float values, which is no whole-layer prefix"):
        load_darknet_backbone(build_model(ModelConfig(classes=["a"])), path)


def write_cfg_text(config: ModelConfig) -> str:
    return format_cfg(cfg_sections(config))


def test_conv_layer_indices_match_the_stock_layout(tmp_path):
    layers = parse_cfg(write_cfg(ModelConfig(classes=["a"]), tmp_path / "x.cfg"))[1:]
    assert [i for i, s in enumerate(layers) if s["type"] == "convolutional"] == CONV_LAYER_INDEX


@needs_shared
def test_stock_cfg_config_and_export_layout(tmp_path):
    config = read_darknet_cfg(DARKNET_CFG, classes=DARKNET_CFG.parent / "coco.names")
    assert config.classes[:2] == ["person", "bicycle"] and config.num_classes == 80
    assert config.anchors == [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
    assert config.anchors_mask == [[3, 4, 5], [1, 2, 3]] and config.input_shape == [416, 416]
    assert config.scale_x_y == 1.05
    # our writer reproduces the stock cfg's layers and values (the [net] training schedule aside)
    stock, ours = parse_cfg(DARKNET_CFG), parse_cfg(write_cfg(config, tmp_path / "coco.cfg"))
    strip = lambda s: {k: v for k, v in s.items() if k != "_line"}  # noqa: E731
    assert [strip(s) for s in stock[1:]] == [strip(s) for s in ours[1:]]


def test_cfg_comments_whitespace_and_aliases(tmp_path):
    text = write_cfg_text(ModelConfig(classes=["a"], scale_x_y=1.05)).replace("[convolutional]", "[conv]", 1)
    text = text.replace("filters=32", "# a comment\n;another\n  filters = 32 ", 1)
    path = tmp_path / "x.cfg"
    path.write_text(text)
    config = read_darknet_cfg(path)
    assert config.scale_x_y == 1.05 and config.num_classes == 1


@pytest.mark.parametrize("old, new, message", [
    ("filters=64", "filters=48", "layer 1 is"),
    ("layers=-1,23", "layers=-1,20", "layer 34 is"),
    ("mask=1,2,3", "mask=1,2", "layer 36 is"),  # the head conv's 18 filters do not fit a 2-anchor mask
    ("scale_x_y=1", "scale_x_y=1.1", "differ in scale_x_y"),
    ("[yolo]", "[yolo]\nnew_coords=1", "new_coords=1"),
])
def test_cfg_that_is_not_yolov4_tiny(tmp_path, old, new, message):
    path = tmp_path / "x.cfg"
    path.write_text(write_cfg_text(ModelConfig(classes=["a"])).replace(old, new, 1))
    with pytest.raises(DarknetFormatError, match=re.escape(message)):
        read_darknet_cfg(path)


def test_attention_models_cannot_be_exported(tmp_path):
    config = ModelConfig(classes=["a"], attention="se")
    with pytest.raises(ValueError, match="no SE/CBAM/ECA layers"):
        export_darknet(build_model(config), config, tmp_path / "m")


def test_is_darknet_weights():
    assert is_darknet_weights("yolov4-tiny.weights") and is_darknet_weights("a/yolov4-tiny.conv.29")
    assert not is_darknet_weights("best.pth") and not is_darknet_weights("model.conv")


def test_decoding_follows_the_cfg_scale_x_y():
    """Darknet: x = (col + sigmoid(tx) * s - (s - 1) / 2) / cols; with s = 1.05 a centre can pass the cell edge."""
    config = ModelConfig(classes=["a"], scale_x_y=1.05, input_shape=[64, 64])
    out0 = torch.zeros(1, 18, 2, 2)
    out1 = torch.zeros(1, 18, 4, 4)
    out0[0, 0] = 4.0  # tx of anchor 0 in every cell
    boxes = decode_outputs((out0, out1), config)
    sig = torch.sigmoid(torch.tensor(4.0))
    expected_x = (1 + sig * 1.05 - 0.025) / 2 * 64  # cell column 1 of 2, 64 px wide
    centre = (boxes[0, 1, 0] + boxes[0, 1, 2]) / 2  # anchor 0, row 0, column 1
    assert centre == pytest.approx(float(expected_x), abs=1e-4)
    assert centre > 64  # beyond the last cell's border: impossible with scale_x_y = 1
