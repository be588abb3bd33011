"""Coordinate attention against a slow reference, block options, placements (neck / backbone / both), identity start,
pretrained loading into new blocks, config round trips and the messages when weights do not fit."""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import bench_attention_init
from nets.attention import (
    ATTENTION_NAMES,
    CA_MIN_HIDDEN,
    AttentionBlock,
    CoordinateAttention,
    block_options,
    create_attention,
    identify_block,
)
from nets.summary import count_parameters
from nets.yolo import ATTENTION_PLACES, YoloBody
from tests.synthetic import make_voc, write_partial, write_weights
from utils.model.checkpoint import CheckpointError, load_model, load_pretrained, load_weights, save_checkpoint
from utils.model.config import ModelConfig, build_model
from utils.train.config import TrainConfig
from utils.train.trainer import Trainer

MASK = [[3, 4, 5], [1, 2, 3]]
FIXTURES = Path(__file__).parent / "fixtures"
BLOCKS = [n for n in ATTENTION_NAMES if n != "none"]


class ReferenceCABlock(nn.Module):
    """The CA_Block of the reference implementation (bubbliiiing/yolov4-tiny-pytorch), written out plainly."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.conv_1x1 = nn.Conv2d(channel, channel // reduction, kernel_size=1, stride=1, bias=False)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(channel // reduction)
        self.F_h = nn.Conv2d(channel // reduction, channel, kernel_size=1, stride=1, bias=False)
        self.F_w = nn.Conv2d(channel // reduction, channel, kernel_size=1, stride=1, bias=False)
        self.sigmoid_h = nn.Sigmoid()
        self.sigmoid_w = nn.Sigmoid()

    def forward(self, x):
        _, _, h, w = x.size()
        x_h = torch.mean(x, dim=3, keepdim=True).permute(0, 1, 3, 2)
        x_w = torch.mean(x, dim=2, keepdim=True)
        x_cat_conv_relu = self.relu(self.bn(self.conv_1x1(torch.cat((x_h, x_w), 3))))
        x_cat_conv_split_h, x_cat_conv_split_w = x_cat_conv_relu.split([h, w], 3)
        s_h = self.sigmoid_h(self.F_h(x_cat_conv_split_h.permute(0, 1, 3, 2)))
        s_w = self.sigmoid_w(self.F_w(x_cat_conv_split_w))
        return x * s_h.expand_as(x) * s_w.expand_as(x)


def reference_state_dict(name: str, nc: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys and shapes of a reference layout file (BN variances positive)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for line in (FIXTURES / name.format(nc=nc)).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        dims = [int(s) for s in re.findall(r"\d+", shape)]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(dims, generator=generator) + 0.5
        else:
            state[key] = torch.randn(dims, generator=generator) * 0.1
    return state


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


# ------------------------------------------------------------------------------------------- coordinate attention
@pytest.mark.parametrize("channels, hidden", [(128, 8), (256, 16), (512, 32)])
def test_ca_hidden_width_equals_the_reference(channels, hidden):
    block = create_attention("ca", channels)
    assert isinstance(block, CoordinateAttention)
    assert block.conv_1x1.weight.shape == (hidden, channels, 1, 1)
    assert block_options("ca") == {"reduction": 16}
    # a larger reduction never squeezes the shared conv below the minimum
    assert create_attention("ca", 128, reduction=64).conv_1x1.out_channels == CA_MIN_HIDDEN


@pytest.mark.parametrize("channels", [128, 256, 512])
def test_ca_block_cross_loads_with_the_reference_block_both_ways(channels):
    torch.manual_seed(channels)
    ours, reference = randomise_bn(CoordinateAttention(channels)).eval(), ReferenceCABlock(channels).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, channels, 7, 11)  # non-square: height and width gates must not be swapped
    assert torch.allclose(ours(x), reference(x), atol=1e-6)
    randomise_bn(reference, seed=1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


@pytest.mark.parametrize("nc", [20, 80])
def test_reference_layout_ca_model_cross_loads_strictly_with_equal_outputs(nc):
    state = reference_state_dict("state_dict_phi4_ca_nc{nc}.txt", nc)
    ours = YoloBody(MASK, nc, "ca").eval()
    ours.load_state_dict(state, strict=True)
    # the reference model: the same body with the reference's CA_Block at its three places
    reference = copy.deepcopy(ours)
    reference.feat1_att, reference.feat2_att, reference.upsample_att = (ReferenceCABlock(c) for c in (256, 512, 128))
    reference.load_state_dict(ours.state_dict(), strict=True)  # ours -> reference
    ours_again = YoloBody(MASK, nc, 4).eval()
    ours_again.load_state_dict(reference.state_dict(), strict=True)  # reference -> ours
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        for a, b, c in zip(ours(x), reference.eval()(x), ours_again(x), strict=True):
            assert torch.allclose(a, b, atol=1e-5) and torch.equal(a, c)
    assert count_parameters(ours) == (5_982_630 if nc == 20 else 6_121_230)


# ------------------------------------------------------------------------------------------------- block options
@pytest.mark.parametrize("name, reduction, key, shape", [
    ("se", 4, "feat1_att.fc.0.weight", (64, 256)),
    ("cbam", 16, "feat1_att.channelattention.fc1.weight", (16, 256, 1, 1)),
    ("ca", 8, "feat1_att.conv_1x1.weight", (32, 256, 1, 1)),
])
def test_reduction_changes_shapes_and_a_default_model_names_the_option(name, reduction, key, shape):
    model = build_model(ModelConfig(classes=["a"], attention=name, attention_options={"reduction": reduction}))
    assert tuple(model.state_dict()[key].shape) == shape
    with pytest.raises(CheckpointError, match=rf"--attention-reduction {reduction} \(this model: "):
        load_weights(YoloBody(MASK, 1, name), model.state_dict())


def test_cbam_kernel_3_changes_shapes_and_a_default_model_names_the_option():
    model = build_model(ModelConfig(classes=["a"], attention="cbam", attention_options={"kernel_size": 3}))
    assert model.state_dict()["feat2_att.spatialattention.conv1.weight"].shape == (1, 2, 3, 3)
    with pytest.raises(CheckpointError, match=r"--cbam-kernel 3 \(this model: 7\)"):
        load_weights(YoloBody(MASK, 1, "cbam"), model.state_dict())


@pytest.mark.parametrize("theirs, ours, message", [
    (("se", "backbone"), ("se", "neck"), "--attention-at backbone"),
    (("ca", "both"), ("none", "neck"), "--attention-at both"),
    (("ca", "neck"), ("eca", "neck"), "--phi ca"),
])
def test_placement_and_type_mismatches_name_the_option(theirs, ours, message):
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_weights(YoloBody(MASK, 2, ours[0], ours[1]), YoloBody(MASK, 2, *theirs).state_dict())


def test_config_validates_and_normalises_options(caplog):
    with pytest.raises(ValueError, match="--cbam-kernel must be 3 or 7"):
        ModelConfig(classes=["a"], attention="cbam", attention_options={"kernel_size": 5})
    with pytest.raises(ValueError, match="--attention-reduction must be a positive integer"):
        ModelConfig(classes=["a"], attention="se", attention_options={"reduction": 0})
    with pytest.raises(ValueError, match="--attention-at"):
        ModelConfig(classes=["a"], attention="se", attention_at="head")
    with pytest.raises(ValueError, match="--attention-reduction 512 leaves no hidden channel"):
        build_model(ModelConfig(classes=["a"], attention="se", attention_options={"reduction": 512}))
    with caplog.at_level(logging.WARNING):
        eca = ModelConfig(classes=["a"], attention="eca", attention_options={"reduction": 8, "kernel_size": 3})
    assert eca.attention_options == {"b": 1, "gamma": 2} and "eca has no reduction option" in caplog.text
    assert ModelConfig(classes=["a"], attention="none", attention_at="backbone").attention_at == "neck"
    assert identify_block(create_attention("cbam", 64, reduction=4, kernel_size=3).state_dict()) == (
        "cbam", {"reduction": 4, "kernel_size": 3})


def test_old_checkpoint_without_the_new_fields_loads_with_defaults(tmp_path):
    config = ModelConfig(classes=["a", "b"], attention="cbam", input_shape=[64, 64])
    old = {k: v for k, v in config.to_dict().items() if k not in ("attention_at", "attention_options", "heads")}
    model = build_model(config)
    save_checkpoint({"model": model.state_dict(), "config": old}, tmp_path / "old.pth")
    rebuilt, loaded = load_model(tmp_path / "old.pth")
    assert (loaded.attention_at, loaded.attention_options, loaded.heads) == ("neck", {"reduction": 8,
                                                                                      "kernel_size": 7}, 2)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.eval()(x)[0], rebuilt(x)[0])


# ---------------------------------------------------------------------------------------------------- placements
@pytest.mark.parametrize("at, places", [("neck", {"feat1_att", "feat2_att", "upsample_att"}),
                                        ("backbone", {f"backbone.resblock_body{i}.feat_att" for i in (1, 2, 3)}),
                                        ("both", {"feat1_att", "feat2_att", "upsample_att"}
                                         | {f"backbone.resblock_body{i}.feat_att" for i in (1, 2, 3)})])
@pytest.mark.parametrize("name", BLOCKS)
def test_every_placement_builds_and_every_parameter_learns(name, at, places):
    torch.manual_seed(0)
    model = YoloBody(MASK, 2, name, at).train()
    assert set(model.attention_blocks()) == places
    out0, out1 = model(torch.randn(2, 3, 64, 96))
    assert out0.shape == (2, 21, 2, 3) and out1.shape == (2, 21, 4, 6)
    (out0.square().mean() + out1.square().mean()).backward()
    # identity start: inside backbone blocks, layers before a zeroed gate layer get gradients from the second step on
    backbone_blocks = [b for n, b in model.attention_blocks().items() if n.startswith("backbone.")]
    gate_params = {id(p) for b in backbone_blocks for layer in b.gate_layers() for p in layer.parameters()}
    waiting = {id(p) for b in backbone_blocks for p in b.parameters()} - gate_params
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert (param.grad.abs().sum() > 0) or id(param) in waiting, param_name


@pytest.mark.parametrize("name", BLOCKS)
def test_backbone_blocks_start_as_the_identity(name):
    """A trained plain model and the same weights with backbone blocks inserted give identical head outputs."""
    torch.manual_seed(1)
    plain = randomise_bn(YoloBody(MASK, 3, "none")).eval()
    inserted = YoloBody(MASK, 3, name, "backbone").eval()
    load_weights(inserted, plain.state_dict(), partial=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(plain(x), inserted(x), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    for (_, block), channels in zip(sorted(inserted.attention_blocks().items()), (64, 128, 256), strict=True):
        assert block.gain == 2.0
        feature = torch.randn(1, channels, 5, 6)
        assert torch.allclose(block(feature), feature, atol=1e-6)


def test_neck_blocks_keep_the_reference_gate():
    model = YoloBody(MASK, 3, "se", "both")
    gains = {name: block.gain for name, block in model.attention_blocks().items()}
    assert {gains[n] for n in ("feat1_att", "feat2_att", "upsample_att")} == {1.0}
    assert {g for n, g in gains.items() if n.startswith("backbone")} == {2.0}


@pytest.mark.parametrize("variant", [("se", "neck"), ("cbam", "backbone"), ("ca", "both")])
def test_shared_layers_start_equal_whatever_the_attention(variant):
    """Same seed, same initial weights for every layer the variants share: an ablation compares attention only."""
    torch.manual_seed(3)
    plain = YoloBody(MASK, 2, "none").state_dict()
    torch.manual_seed(3)
    other = YoloBody(MASK, 2, *variant).state_dict()
    shared = [k for k in plain if k in other]
    assert len(shared) == len(plain)
    assert all(torch.equal(plain[k], other[k]) for k in shared)


def test_freezing_the_backbone_keeps_its_attention_trainable():
    model = YoloBody(MASK, 2, "ca", "both")
    model.freeze_backbone(True)
    for name, param in model.named_parameters():
        inside_attention = ".feat_att." in name
        assert param.requires_grad == (inside_attention or not name.startswith("backbone.")), name
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------ pretrained weights
@pytest.mark.parametrize("source", ["ours", "reference"])
def test_pretrained_pth_loads_into_backbone_placement_and_names_new_blocks(tmp_path, caplog, source):
    """Our checkpoint of a neck model, or a bare reference-layout state_dict: its neck blocks fit 'both', the
    backbone blocks are new."""
    if source == "ours":
        state = YoloBody(MASK, 20, "cbam").state_dict()
        path = write_weights(tmp_path / "cbam.pth", state, ModelConfig(classes=list("abcdefghijklmnopqrst"),
                                                                       attention="cbam"))
    else:
        state = reference_state_dict("state_dict_phi2_cbam_nc{nc}.txt", 20)
        path = tmp_path / "reference_cbam.pth"
        torch.save(state, path)
    model = YoloBody(MASK, 20, "cbam", "both")
    with caplog.at_level(logging.INFO):
        load_pretrained(model, str(path))
    assert "newly initialised attention blocks (3): backbone.resblock_body1.feat_att, " \
           "backbone.resblock_body2.feat_att, backbone.resblock_body3.feat_att" in caplog.text
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_darknet_conv29_loads_into_backbone_placement_and_names_new_blocks(tmp_path, caplog):
    source = YoloBody(MASK, 80, "none")
    path = write_partial(source, tmp_path / "yolov4-tiny.conv.29")
    model = YoloBody(MASK, 2, "se", "backbone")
    with caplog.at_level(logging.INFO):
        load_pretrained(model, str(path))
    assert "loaded 17 Darknet conv layers" in caplog.text
    assert "newly initialised attention blocks (3)" in caplog.text
    for key in ("backbone.resblock_body3.conv4.conv.weight", "yolo_headP5.0.conv.weight"):
        assert torch.equal(model.state_dict()[key], source.state_dict()[key])


def test_partial_load_with_other_block_options_warns_with_the_option(tmp_path, caplog):
    other = build_model(ModelConfig(classes=["a"], attention="se", attention_options={"reduction": 4}))
    path = tmp_path / "r4.pth"
    torch.save(other.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        load_pretrained(YoloBody(MASK, 1, "se"), str(path))
    assert "--attention-reduction 4 (this model: 16)" in caplog.text


# ------------------------------------------------------------------------------- training and checkpoint round trip
NO_AUGMENT = {"mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "flip": 0.0, "jitter": 0.0,
              "scale": (1.0, 1.0), "translate": False}


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data"), images=4)


@pytest.mark.parametrize("phi, at, options", [("ca", "neck", {}), ("se", "backbone", {"reduction": 4}),
                                              ("cbam", "both", {"kernel_size": 3})])
def test_every_placement_trains_and_round_trips_through_its_checkpoint(tiny_voc, tmp_path, phi, at, options):
    config = TrainConfig(data=str(tiny_voc), phi=phi, attention_at=at, input_shape=[64, 64], epochs=4, batch_size=2,
                         workers=0, save_dir=str(tmp_path), eval_period=4, preview=False, augment=dict(NO_AUGMENT),
                         warmup_epochs=1, optimizer="adam", lr=1e-2, ema=False, attention_options=options)
    trainer = Trainer(config)
    history = trainer.fit().history
    assert history[-1]["train/total"] < 0.7 * history[0]["train/total"], [r["train/total"] for r in history]
    model, loaded = load_model(trainer.run_dir / "last.pth")
    assert loaded == trainer.model_config and (loaded.attention, loaded.attention_at) == (phi, at)
    assert loaded.attention_options == {**block_options(phi), **options}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x)[1], trainer.model.eval().float()(x.contiguous())[1], atol=1e-5)


def test_attention_blocks_are_attention_block_instances():
    for name in BLOCKS:
        assert isinstance(create_attention(name, 64), AttentionBlock)
    assert ATTENTION_PLACES == ("neck", "backbone", "both")


def test_bench_attention_init_reports_an_exact_identity_start(tiny_voc, tmp_path, capsys):
    config = ModelConfig(classes=["blue", "red"], attention="none", input_shape=[64, 64])
    weights = write_weights(tmp_path / "plain.pth", randomise_bn(build_model(config)).state_dict(), config)
    assert bench_attention_init.main(["--weights", str(weights), "--data", str(tiny_voc), "--attention", "se,ca"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["attention"], r.get("init")) for r in rows[1:]] == [
        (a, i) for a in ("se", "ca") for i in ("default", "zero-gate", "identity")]
    for row in rows[1:]:
        if row["init"] == "identity":
            assert row["relative_head_change"] == 0.0 and row["mAP50"] == rows[0]["mAP50"]
        else:
            assert row["relative_head_change"] > 0.01
