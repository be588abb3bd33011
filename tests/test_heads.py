"""The three-head model (--heads 3, Darknet's yolov4-tiny-3l): structure, attention on its new path, loss, decoding,
checkpoints, Darknet import/export checked against OpenCV, ONNX and int8, k-means with 9 anchors, and the tools end to
end. The two-head model's layout is checked by tests/test_model.py and tests/test_attention.py, unchanged."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_script
import predict as predict_script
import train as train_script
from nets.attention import attention_names
from nets.summary import count_parameters
from nets.summary import main as summary_main
from nets.yolo import (
    DARKNET_3L_ANCHORS_608,
    DEFAULT_ANCHORS_3L,
    DEFAULT_ANCHORS_MASK,
    DEFAULT_ANCHORS_MASK_3L,
    YoloBody,
    head_layout,
)
from tests.paths import DARKNET_CFG, needs_shared
from tests.synthetic import make_voc, write_partial, write_weights
from tests.test_darknet import check_parity, needs_opencv_darknet, random_model, scrambled_model
from utils import anchors as anchors_command
from utils.common.image_io import to_model_input
from utils.model.checkpoint import CheckpointError, load_model, load_weights
from utils.model.config import ModelConfig, build_model, read_anchors
from utils.model.darknet import (
    CONV_LAYER_INDEX_3L,
    darknet_convs,
    export_darknet,
    load_darknet,
    load_darknet_backbone,
    parse_cfg,
    read_darknet_cfg,
    write_cfg,
)
from utils.model.darknet import (
    write_weights as write_darknet_weights,
)
from utils.model.decode import decode_outputs, non_max_suppression
from utils.runtime.detector import objectness_map
from utils.train.loss import YoloLoss

MASK3 = DEFAULT_ANCHORS_MASK_3L
BLOCKS = [n for n in attention_names() if n != "none"]
P3_KEYS = {"upsample_P3.upsample.0.conv.weight", "yolo_headP3.0.conv.weight", "yolo_headP3.1.weight",
           "yolo_headP3.1.bias"}
FAST = ["--epochs", "1", "--batch-size", "2", "--input-shape", "64", "--workers", "0", "--device", "cpu",
        "--no-preview", "--no-amp"]
# The published yolov4-tiny-3l.cfg, when a copy is at hand: its import is then also checked against the file itself.
PUBLISHED_3L_ENV = "YOLO_DARKNET_3L_CFG"


# -------------------------------------------------------------------------------------------------------- model
def test_three_heads_in_stride_order_with_the_model_telling_its_strides():
    model = YoloBody(MASK3, 3, "none").eval()
    outputs = model(torch.zeros(1, 3, 128, 160))
    assert model.strides == (32, 16, 8) == ModelConfig(classes=["a"], heads=3).strides
    assert len(outputs) == len(model.head_output_convs()) == 3
    for out, stride, conv in zip(outputs, model.strides, model.head_output_convs(), strict=True):
        assert out.shape == (1, 3 * 8, 128 // stride, 160 // stride) and conv.out_channels == 3 * 8
    model.initialize_biases([128, 160])  # one prior per head, from its own stride
    assert float(model.yolo_headP3[1].bias[4].detach()) == pytest.approx(np.log(8 / (16 * 20)))


def test_train_py_offers_the_head_counts_there_are():
    from nets.yolo import HEAD_LAYOUTS
    from utils.train.cli import get_args_parser

    heads = next(action for action in get_args_parser()._actions if action.dest == "heads")
    assert tuple(heads.choices) == tuple(sorted(HEAD_LAYOUTS))  # written out in train.py so that --help needs no torch


def test_default_anchors_are_darknets_3l_anchors_at_416():
    assert head_layout(3).anchors == DEFAULT_ANCHORS_3L and head_layout(3).anchors_mask == MASK3
    for ours, darknet in zip(DEFAULT_ANCHORS_3L, DARKNET_3L_ANCHORS_608, strict=True):
        assert ours == [round(v * 416 / 608) for v in darknet]
    config = ModelConfig(classes=["a"], heads=3)
    assert config.anchors == [[float(w), float(h)] for w, h in DEFAULT_ANCHORS_3L] and config.anchors_mask == MASK3
    assert ModelConfig(classes=["a"]).anchors_mask == DEFAULT_ANCHORS_MASK  # two heads: as before
    with pytest.raises(ValueError, match="need 9 anchors, but 6 were given"):
        ModelConfig(classes=["a"], heads=3, anchors=[[10, 10]] * 6)
    with pytest.raises(ValueError, match="--heads"):
        ModelConfig(classes=["a"], heads=4)


def test_the_two_head_layers_keep_their_names_shapes_and_initial_weights():
    """Three heads add the P3 path and nothing else; for one seed the shared layers start alike."""
    torch.manual_seed(5)
    two = YoloBody(DEFAULT_ANCHORS_MASK, 20, "none").state_dict()
    torch.manual_seed(5)
    three = YoloBody(MASK3, 20, "none").state_dict()
    assert set(two) < set(three) and P3_KEYS < set(three) - set(two)
    assert all(k.startswith(("upsample_P3.", "yolo_headP3.")) for k in set(three) - set(two))
    assert all(torch.equal(two[k], three[k]) for k in two)
    # Darknet's parameter count: 270,847 more than yolov4-tiny (1x1 256->64, 3x3 192->128, head 128->255)
    assert count_parameters(YoloBody(MASK3, 80, 0)) == 6_056_606 + 270_847


@pytest.mark.parametrize("name", BLOCKS)
def test_attention_applies_to_the_new_path(name):
    model = YoloBody(MASK3, 2, name, "both").train()
    assert {"feat0_att", "upsample_P3_att"} <= set(model.attention_blocks())
    assert len(model.attention_blocks()) == 8  # 5 in the neck, 3 in the backbone
    assert model.feat0_att.state_dict().keys() == model.upsample_att.state_dict().keys()
    outputs = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outputs).backward()
    for param_name, param in model.named_parameters():
        if not param_name.startswith("backbone."):  # backbone blocks start as the identity (test_attention.py)
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name


# ---------------------------------------------------------------------------------- loss, decoding, heat maps
def test_loss_decoding_nms_and_heat_maps_take_three_heads():
    torch.manual_seed(0)
    config = ModelConfig(classes=["a", "b"], heads=3, input_shape=[64, 96])
    model = build_model(config).train()
    outputs = model(torch.rand(2, 3, 64, 96))
    targets = torch.tensor([[0, 0, 4.0, 4, 12, 14], [1, 1, 10, 10, 90, 60]])  # a small box and a large one
    loss = YoloLoss(config)(outputs, targets)
    assert all(torch.isfinite(v) for v in loss.values())
    loss["total"].backward()
    assert model.yolo_headP3[1].weight.grad.abs().sum() > 0  # the small box is a positive of the stride-8 head
    with torch.no_grad():
        decoded = decode_outputs(model.eval()(torch.rand(1, 3, 64, 96)), config)
    assert decoded.shape == (1, 3 * (2 * 3 + 4 * 6 + 8 * 12), 7)
    assert len(non_max_suppression(decoded, conf_thres=0.0)) == 1
    assert objectness_map(decoded[0], config, config.input_shape).shape == (64, 96)


# --------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_and_bare_state_dicts_rebuild_three_heads(tmp_path):
    config = ModelConfig(classes=["a", "b"], heads=3, attention="eca", input_shape=[64, 64])
    model = build_model(config).eval()
    rebuilt, loaded = load_model(write_weights(tmp_path / "m.pth", model.state_dict(), config))
    assert loaded == config and loaded.heads == 3
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # the head count is read from the keys
    assert load_model(tmp_path / "bare.pth", classes=["a", "b"], phi="eca")[1].heads == 3
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(model(x), rebuilt(x), strict=True))
    with pytest.raises(CheckpointError, match=re.escape("the weights have 3 heads (--heads 3) but this model has 2")):
        load_weights(YoloBody(DEFAULT_ANCHORS_MASK, 2, "eca"), model.state_dict())


# ----------------------------------------------------------------------------------------------------- Darknet
def darknet_3l_cfg(stock: str) -> str:
    """yolov4-tiny-3l.cfg as Darknet publishes it, from the stock yolov4-tiny.cfg: 608 input, its 9 anchors with
    masks 6,7,8 / 3,4,5, and the stride-8 path appended (from layer 35, a 1x1 conv to 64, upsample, concat with the
    second CSP stage's layer 15, a 3x3 conv to 128, the head conv, [yolo] with mask 0,1,2)."""
    anchors = ", ".join(f"{w}, {h}" for w, h in DARKNET_3L_ANCHORS_608)
    text = re.sub(r"^anchors = .*$", f"anchors = {anchors}", stock, flags=re.M)
    text = text.replace("width=416", "width=608").replace("height=416", "height=608").replace("num=6", "num=9")
    text = text.replace("mask = 3,4,5", "mask = 6,7,8").replace("mask = 1,2,3", "mask = 3,4,5")
    yolo = text[text.rindex("[yolo]"):].replace("mask = 3,4,5", "mask = 0,1,2")
    return text + ("\n[route]\nlayers = -3\n\n[convolutional]\nbatch_normalize=1\nfilters=64\nsize=1\nstride=1\n"
                   "pad=1\nactivation=leaky\n\n[upsample]\nstride=2\n\n[route]\nlayers = -1, 15\n\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=128\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
                   "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=255\nactivation=linear\n\n") + yolo


def published_3l_cfgs(tmp_path: Path) -> list[Path]:
    """The 3l cfg made from the stock cfg, and the published file itself when PUBLISHED_3L_ENV names one."""
    made = tmp_path / "yolov4-tiny-3l.cfg"
    made.write_text(darknet_3l_cfg(DARKNET_CFG.read_text()))
    return [made] + ([Path(os.environ[PUBLISHED_3L_ENV])] if os.environ.get(PUBLISHED_3L_ENV) else [])


def strip(section: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in section.items() if k != "_line"}


@needs_shared
def test_darknet_3l_cfg_builds_this_model_and_our_writer_reproduces_it(tmp_path):
    for cfg in published_3l_cfgs(tmp_path):
        config = read_darknet_cfg(cfg, classes=DARKNET_CFG.parent / "coco.names")
        assert (config.heads, config.anchors_mask, config.input_shape, config.scale_x_y) == (
            3, MASK3, [608, 608], 1.05)
        assert config.anchors == [[float(w), float(h)] for w, h in DARKNET_3L_ANCHORS_608]
        stock = parse_cfg(cfg)
        assert len(stock) - 1 == 45  # layers 0..44
        assert [strip(s) for s in stock[1:]] == [strip(s) for s in parse_cfg(write_cfg(config, tmp_path / "o.cfg"))[1:]]
        assert [i for i, s in enumerate(stock[1:]) if s["type"] == "convolutional"] == CONV_LAYER_INDEX_3L
        model = build_model(config)
        assert count_parameters(model) == 6_327_453


@needs_shared
@needs_opencv_darknet
def test_opencv_reads_darknets_3l_cfg_with_our_weights(tmp_path):
    """Weights we write for the published 3l layout, read by OpenCV with that cfg: our raw heads and boxes."""
    cfg = published_3l_cfgs(tmp_path)[-1]
    config = read_darknet_cfg(cfg)
    model = random_model(config)
    weights = write_darknet_weights(model, tmp_path / "r.weights")
    check_parity(model, config, cfg, weights)
    loaded, loaded_config = load_darknet(cfg, weights)
    assert loaded_config == config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))


@needs_opencv_darknet
def test_opencv_reads_our_three_head_export(tmp_path):
    config = ModelConfig(classes=["cat", "dog", "fox"], heads=3, input_shape=[256, 320])
    model = random_model(config, seed=2)
    cfg, weights = export_darknet(model, config, tmp_path / "exported")
    check_parity(model, config, cfg, weights)
    loaded, loaded_config = load_darknet(cfg, weights, classes=config.classes)
    assert loaded_config == config
    again = export_darknet(loaded, loaded_config, tmp_path / "again")
    assert again[1].read_bytes() == weights.read_bytes() and again[0].read_text() == cfg.read_text()


def test_conv29_and_complete_3l_files_give_the_backbone_of_a_three_head_model(tmp_path):
    source = scrambled_model(ModelConfig(classes=[str(i) for i in range(80)], heads=3), seed=7)
    target = build_model(ModelConfig(classes=["a"], heads=3))
    assert load_darknet_backbone(target, write_partial(source, tmp_path / "yolov4-tiny.conv.29")) == 17
    assert torch.equal(target.yolo_headP5[0].conv.weight, source.yolo_headP5[0].conv.weight)
    full = write_darknet_weights(source, tmp_path / "coco-3l.weights")
    assert load_darknet_backbone(build_model(ModelConfig(classes=["a"], heads=3)), full) == 17
    assert sum(t.numel() for layer in darknet_convs(source) for t in layer) * 4 + 20 == full.stat().st_size


# ------------------------------------------------------------------------------------------ ONNX, int8, anchors
def test_onnx_and_int8_exports_of_three_heads(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements-dev.txt)")
    from utils.deploy.export import export_onnx
    from utils.deploy.quantize import output_convs, quantize_onnx
    from utils.runtime.onnx import OnnxDetector

    torch.manual_seed(1)
    config = ModelConfig(classes=["a", "b"], heads=3, input_shape=[64, 96])
    model = build_model(config).eval()
    fp32 = export_onnx(model, config, tmp_path / "m.onnx")
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 96, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = decode_outputs(model(to_model_input(images)), config)
    got = OnnxDetector(fp32).forward(images)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3, atol=1e-3)
    import onnx
    assert len(output_convs(onnx.load(str(fp32)).graph)) == 3  # the three head convs stay float
    int8 = quantize_onnx(fp32, tmp_path / "m_int8.onnx", list(images))
    assert OnnxDetector(int8).forward(images).shape == expected.shape


def test_kmeans_fits_nine_anchors_and_compares_with_the_3l_defaults(tmp_path, capsys):
    data = make_voc(tmp_path / "voc", images=8)
    out = tmp_path / "a9.txt"
    assert anchors_command.main(["--data", str(data), "--num", "9", "--input-shape", "128", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "default (3 heads)" in printed
    assert len(ModelConfig(classes=["red", "blue"], heads=3, anchors=read_anchors(out)).anchors) == 9


def test_summary_counts_three_heads(capsys):
    assert summary_main(["--heads", "3", "--num-classes", "80"]) == 0
    assert "heads=3): 6,327,453 parameters" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- the tools, end to end
def test_train_eval_predict_with_three_heads(tmp_path, capsys):
    data = make_voc(tmp_path / "voc", images=4)
    assert train_script.main(["--data", str(data), "--heads", "3", "--phi", "se", "--save-dir", str(tmp_path / "r"),
                              *FAST]) == 0
    weights = tmp_path / "r" / "exp" / "best.pth"
    assert load_model(weights)[1].heads == 3
    assert eval_script.main(["--weights", str(weights), "--data", str(data), "--workers", "0", "--device", "cpu",
                             "--save-dir", str(tmp_path / "r"), "--no-amp"]) == 0
    images = data / "VOC2007" / "JPEGImages"
    assert predict_script.main(["--weights", str(weights), "--source", str(images), "--device", "cpu",
                                "--save-dir", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "eval" / "metrics.json").is_file()


def test_bench_heads_reports_both_models_and_their_ratios(capsys):
    from benchmarks import bench_heads
    assert bench_heads.main(["--size", "64", "--num-classes", "2", "--train-batch", "1", "--train-steps", "1",
                             "--infer-batch", "1", "--infer-calls", "1", "--rounds", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["heads"] for line in lines[:2]] == [2, 3]
    assert lines[1]["parameters"] > lines[0]["parameters"] and lines[1]["gflops"] > lines[0]["gflops"]
    assert lines[2]["bench"] == "heads_ratio_3_over_2"
    assert all(lines[2][f"{what}_speed_per_{unit}"] > 0 for what in ("train", "infer") for unit in ("s", "cpu_s"))


def test_small_object_mosaics_shrink_every_box_and_keep_the_splits_apart(tmp_path):
    from benchmarks.small_objects import make_small_objects
    from utils.data.index import load_split
    data = make_voc(tmp_path / "voc", images=6, size=(96, 128))
    counts = make_small_objects(str(data), tmp_path / "small", grid=2, side=128)
    source = {s: load_split(data, s) for s in ("train", "val", "test")}
    for split, index in source.items():
        made = load_split(tmp_path / "small", split)
        assert len(made.records) == len(index.records) and made.classes == load_split(data, "all").classes
        assert counts[split] == sum(len(r.boxes) for r in made.records) == 4 * sum(len(r.boxes) for r in index.records)
        largest = max(float((r.boxes[:, 2:] - r.boxes[:, :2]).max()) for r in index.records)
        assert max(float((r.boxes[:, 2:] - r.boxes[:, :2]).max()) for r in made.records) <= largest / 2 + 1
