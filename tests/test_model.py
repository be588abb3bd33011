"""The network: shapes, gradients, reference state_dict layout, parameter counts, phi validation, safe loading."""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import pytest
import torch

from nets.attention import ATTENTION_NAMES, CBAMBlock, ECABlock, SEBlock, create_attention, eca_kernel_size
from nets.summary import count_gflops, count_parameters
from nets.yolo import YoloBody
from utils.model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
)
from utils.model.config import ModelConfig, build_model

MASK = [[3, 4, 5], [1, 2, 3]]
FIXTURES = Path(__file__).parent / "fixtures"
PHIS = [(0, "none"), (1, "se"), (2, "cbam"), (3, "eca"), (4, "ca")]


def reference_layout(phi: int, name: str, nc: int) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    """Key/shape list and parameter count from our copy of the reference layout files."""
    text = (FIXTURES / f"state_dict_phi{phi}_{name}_nc{nc}.txt").read_text()
    count = int(re.search(r"(\d+) trainable parameters", text).group(1))
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return rows, count


@pytest.mark.parametrize("phi", [p for p, _ in PHIS])
@pytest.mark.parametrize("size", [416, 320])
def test_output_shapes(phi, size):
    model = YoloBody(MASK, 20, phi).eval()
    with torch.no_grad():
        out0, out1 = model(torch.zeros(2, 3, size, size))
    assert out0.shape == (2, 75, size // 32, size // 32)
    assert out1.shape == (2, 75, size // 16, size // 16)


def test_rectangular_input():
    out0, out1 = YoloBody(MASK, 3, "eca").eval()(torch.zeros(1, 3, 320, 416))
    assert out0.shape[-2:] == (10, 13) and out1.shape[-2:] == (20, 26)


def test_the_model_knows_its_strides_and_head_convs():
    """strides (what the loss, decoding and heat maps use) match the real outputs, head by head, in order."""
    model = YoloBody(MASK, 3, "cbam").eval()
    outputs = model(torch.zeros(1, 3, 320, 416))
    assert model.strides == ModelConfig(classes=["a"]).strides
    assert len(outputs) == len(model.strides) == len(model.head_output_convs())
    for out, stride, conv in zip(outputs, model.strides, model.head_output_convs(), strict=True):
        assert out.shape[-2:] == (320 // stride, 416 // stride) and out.shape[1] == conv.out_channels == 3 * 8


def test_initialize_biases_sets_the_objectness_and_class_priors():
    model = YoloBody(MASK, 3, 0)
    model.initialize_biases([320, 416])
    for conv, stride in zip(model.head_output_convs(), model.strides, strict=True):
        bias = conv.bias.detach().view(3, 8)
        cells = (320 / stride) * (416 / stride)  # about 8 objects per image, spread over every anchor and cell
        assert torch.allclose(bias[:, 4], torch.full((3,), math.log(8 / cells)))
        assert torch.allclose(bias[:, 5:], torch.full((3, 3), math.log(0.6 / 2.01)))
        assert not conv.bias.requires_grad or conv.bias.grad is None


def test_one_anchor_mask_per_head():
    with pytest.raises(ValueError, match=r"one list of indices into the anchors per head of the model \(2 heads\)"):
        ModelConfig(classes=["a"], anchors_mask=[[3, 4, 5], [1, 2, 3], [0, 1, 2]])
    with pytest.raises(ValueError, match="one mask per head"):
        YoloBody([[3, 4, 5]], 3, 0)


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "ca"])
@pytest.mark.parametrize("channels", [128, 256, 512])
def test_attention_keeps_shape(name, channels):
    x = torch.randn(2, channels, 7, 9)
    assert create_attention(name, channels)(x).shape == x.shape


def test_attention_factory_names_and_types():
    assert ATTENTION_NAMES == ("none", "se", "cbam", "eca", "ca")
    assert isinstance(create_attention(1, 64), SEBlock)
    assert isinstance(create_attention("CBAM", 64), CBAMBlock)
    assert isinstance(create_attention("3", 64), ECABlock)
    assert isinstance(create_attention("none", 64), torch.nn.Identity)


def test_eca_kernel_sizes():
    # |log2(C) + 1| / 2, truncated, forced odd
    assert [eca_kernel_size(c) for c in (16, 64, 128, 256, 512, 1024)] == [3, 3, 5, 5, 5, 5]


@pytest.mark.parametrize("bad", [5, -1, "sk", "", 1.5, True])
def test_bad_phi_raises_value_error(bad):
    with pytest.raises(ValueError, match="valid values"):
        YoloBody(MASK, 20, bad)


@pytest.mark.parametrize("size", [415, 400, 0])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        YoloBody(MASK, 1, 0)(torch.zeros(1, 3, size, 416))
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(classes=["a"], input_shape=[size, size])


@pytest.mark.parametrize("phi", [p for p, _ in PHIS])
def test_every_parameter_gets_a_finite_gradient(phi):
    torch.manual_seed(0)
    model = YoloBody(MASK, 2, phi).train()
    out0, out1 = model(torch.randn(2, 3, 128, 128))
    (out0.square().mean() + out1.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("phi,name", PHIS)
@pytest.mark.parametrize("nc", [20, 80])
def test_state_dict_matches_reference_layout(phi, name, nc):
    expected, count = reference_layout(phi, name, nc)
    model = YoloBody(MASK, nc, phi)
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert sorted(actual) == sorted(expected)
    assert count_parameters(model) == count


def test_published_parameter_counts():
    counts = {name: count_parameters(YoloBody(MASK, 80, phi)) for phi, name in PHIS}
    assert counts == {"none": 6_056_606, "se": 6_099_614, "cbam": 6_142_916, "eca": 6_056_621, "ca": 6_121_230}
    assert count_parameters(YoloBody(MASK, 20, 0)) == 5_918_006


def test_gflops_near_published_figure():
    gflops = count_gflops(YoloBody(MASK, 80, 0), (416, 416))
    assert 6.5 < gflops < 7.3  # Darknet reports 6.9 BFLOPs for yolov4-tiny at 416


def test_reference_state_dict_loads_strict():
    source, target = YoloBody(MASK, 20, 2), YoloBody(MASK, 20, "cbam")
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


def test_class_count_mismatch_names_both_counts(tmp_path):
    source = YoloBody(MASK, 80, 0)
    with pytest.raises(CheckpointError, match=r"80 classes but 20"):
        load_weights(YoloBody(MASK, 20, 0), source.state_dict())


def test_partial_load_reports_skipped_heads():
    source, target = YoloBody(MASK, 80, 1), YoloBody(MASK, 20, 1)
    report = load_weights(target, source.state_dict(), partial=True)
    assert set(report.skipped) == {"yolo_headP5.1.weight", "yolo_headP5.1.bias",
                                   "yolo_headP4.1.weight", "yolo_headP4.1.bias"}
    key = "backbone.conv1.conv.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    assert "skipped 4" in report.summary()


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": evil}, handle)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    torch.save({"model": evil}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_round_trip_rebuilds_model(tmp_path):
    config = ModelConfig(classes=["cat", "dog"], attention="eca", input_shape=[320, 320])
    model = build_model(config)
    save_checkpoint({"model": model.state_dict(), "config": config.to_dict()}, tmp_path / "m.pth")
    rebuilt, loaded_config = load_model(tmp_path / "m.pth")
    assert loaded_config == config
    x = torch.randn(1, 3, 320, 320)
    model.eval()
    assert torch.equal(model(x)[0], rebuilt(x)[0])


@pytest.mark.parametrize("version", [2, 99, "1", 0, True])
def test_checkpoints_of_an_unknown_format_version_are_refused(tmp_path, version):
    config = ModelConfig(classes=["a"], input_shape=[64, 64])
    save_checkpoint({"model": build_model(config).state_dict(), "config": config.to_dict(),
                     "format_version": version}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match=f"format_version {version!r}.*reads versions 1 to {FORMAT_VERSION}"):
        load_model(tmp_path / "new.pth")


def test_files_without_a_format_version_are_version_1(tmp_path):
    """Our checkpoints from before the field and bare (reference) state_dicts carry none."""
    config = ModelConfig(classes=["a"], input_shape=[64, 64])
    state = build_model(config).state_dict()
    save_checkpoint({"model": state, "config": config.to_dict()}, tmp_path / "old.pth")
    torch.save(state, tmp_path / "bare.pth")
    assert load_model(tmp_path / "old.pth")[1] == config
    assert load_model(tmp_path / "bare.pth", classes=["a"])[1].classes == ["a"]


def test_config_rejects_unknown_phi_and_empty_classes():
    with pytest.raises(ValueError, match="valid values"):
        ModelConfig(classes=["a"], attention="transformer")
    with pytest.raises(ValueError, match="empty"):
        ModelConfig(classes=[])
