"""predict.py --attention-maps: each block kind's map is what the block applies, at its feature map's size, and the
picture per image has a fixed layout and a stable name."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import predict
from nets.attention import ATTENTION_NAMES
from tests.synthetic import write_weights
from utils.common.errors import ConfigError
from utils.deploy.attention_maps import (
    CAPTION_LINE,
    AttentionRecorder,
    attention_detector,
    attention_picture,
    tile_size,
)
from utils.model.config import ModelConfig, build_model
from utils.runtime.detector import BaseDetector, DetectOptions, Detector

SIZE = 128
BLOCKS = [n for n in ATTENTION_NAMES if n != "none"]
# stride of the feature map each block sees
STRIDES = {"backbone.resblock_body1.feat_att": 4, "backbone.resblock_body2.feat_att": 8,
           "backbone.resblock_body3.feat_att": 16, "feat1_att": 16, "feat2_att": 32, "upsample_att": 16}


def model_and_config(attention: str, at: str = "both"):
    torch.manual_seed(0)
    config = ModelConfig(classes=["a", "b"], attention=attention, attention_at=at, input_shape=[SIZE, SIZE])
    model = build_model(config).eval()
    with torch.no_grad():  # move the identity-start gates off 1 so that their maps are not flat
        for block in model.attention_blocks().values():
            for layer in block.gate_layers():
                layer.weight.normal_(0, 0.1)
    return model, config


@pytest.mark.parametrize("attention", BLOCKS)
def test_recorded_maps_are_what_each_block_applies(attention):
    model, _ = model_and_config(attention)
    seen = {}
    handles = [block.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, (i[0], o)))
               for name, block in model.attention_blocks().items()]
    extra = []
    if attention == "cbam":  # the spatial gate, as CBAM's own branch returns it
        extra = [b.spatialattention.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n + "/s", o))
                 for name, b in model.attention_blocks().items()]
    x = torch.rand(1, 3, SIZE, 2 * SIZE)
    with AttentionRecorder(model) as recorder, torch.no_grad():
        model(x)
    for handle in handles + extra:
        handle.remove()
    assert set(recorder.maps) == set(STRIDES)
    for name, attention_map in recorder.maps.items():
        assert attention_map.shape == (1, SIZE // STRIDES[name], 2 * SIZE // STRIDES[name]), name
        block_in, block_out = seen[name]
        if attention in ("se", "eca"):  # channel-weighted energy: mean over channels of (w_c x_c)^2 = output^2
            expected = block_out.square().mean(dim=1)
        elif attention == "cbam":
            expected = seen[name + "/s"][:, 0] * model.attention_blocks()[name].gain
        else:  # ca: output = x * (h gate x w gate) per channel
            expected = (block_out / block_in).mean(dim=1)
        assert torch.allclose(attention_map, expected, rtol=1e-3, atol=1e-5), name


def test_hooks_are_removed_after_use():
    model, _ = model_and_config("ca")
    with AttentionRecorder(model):
        pass
    assert all(not block._forward_hooks for block in model.attention_blocks().values())


@pytest.mark.parametrize("attention, at, tiles", [("none", "neck", 2), ("se", "neck", 5), ("cbam", "backbone", 5),
                                                  ("eca", "both", 8), ("ca", "both", 8)])
def test_picture_layout_depends_only_on_image_and_blocks(attention, at, tiles):
    model, config = model_and_config(attention, at)
    detector = Detector(model, config, "cpu", DetectOptions(conf_thres=0.3), optimize=False, precision="fp32")
    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    picture = attention_picture(detector, AttentionRecorder(detector.model), image)
    width, height = tile_size(image)
    assert (width, height) == (360, 216)
    columns = min(4, tiles)
    rows = -(-tiles // columns)
    assert picture.shape == (rows * (height + 2 * CAPTION_LINE), columns * width, 3)


def test_predict_writes_one_attention_picture_per_image(tmp_path, capsys):
    model, config = model_and_config("cbam", "neck")
    weights = write_weights(tmp_path / "cbam.pth", model.state_dict(), config)
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(96, 160), (120, 120)]):
        cv2.imwrite(str(images / f"im{i}.jpg"), np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "out"
    argv = ["--weights", str(weights), "--source", str(images), "--save-dir", str(out.parent), "--name", out.name,
            "--attention-maps",
            "--nosave"]
    assert predict.main(argv) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["im0_attention.jpg", "im1_attention.jpg"]
    assert cv2.imread(str(out / "im1_attention.jpg")).shape == (2 * (360 + 2 * CAPTION_LINE), 4 * 360, 3)  # 5 tiles


def test_attention_maps_of_a_video_is_a_clear_error(tmp_path, capsys):
    model, config = model_and_config("se", "neck")
    weights = write_weights(tmp_path / "se.pth", model.state_dict(), config)
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for _ in range(3):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    argv = ["--weights", str(weights), "--source", str(video), "--save-dir", str(tmp_path), "--name", "o",
            "--attention-maps"]
    assert predict.main(argv) == 1
    assert "--attention-maps draws one picture per image" in capsys.readouterr().err


def test_attention_maps_of_an_onnx_model_is_a_user_error():
    """An exported model has no blocks to hook: a UserError (one `error:` line), not a traceback."""
    _, config = model_and_config("se", "neck")
    onnx_like = BaseDetector(config)  # what OnnxDetector is: no PyTorch `model` attribute
    with pytest.raises(ConfigError, match="needs PyTorch weights"):
        attention_detector(onnx_like)
