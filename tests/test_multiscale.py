"""Multi-scale training: the drawn sizes are multiples of the model's largest stride within the range, targets follow
the images, the loss is finite at every size, and a run with --multi-scale trains and validates at --input-shape."""
from __future__ import annotations

import pytest
import torch

import train as train_script
from tests.synthetic import make_voc
from utils.common.errors import ConfigError
from utils.data.loader import MultiScale
from utils.model.config import ModelConfig, build_model
from utils.train.loss import YoloLoss


def test_sizes_are_stride_multiples_within_the_range():
    scale = MultiScale([320, 320], 32)
    assert scale.shapes == [(s, s) for s in range(160, 481, 32)]
    assert MultiScale([256, 320], 32, 1.0, 1.0).shapes == [(256, 320)]
    with pytest.raises(ConfigError):
        MultiScale([320, 320], 32, 1.5, 0.5)


def test_every_size_gives_right_shapes_and_a_finite_loss():
    torch.manual_seed(0)
    config = ModelConfig(classes=["a", "b"], input_shape=[96, 96])
    model, loss_fn = build_model(config), YoloLoss(config)
    scale = MultiScale(config.input_shape, max(model.strides), 0.5, 1.5)
    images = torch.rand(2, 3, 96, 96)
    targets = torch.tensor([[0, 0, 10, 20, 50, 60], [1, 1, 30, 30, 90, 80]], dtype=torch.float32)
    seen = set()
    for height, width in scale.shapes:
        scale.draw = lambda h=height, w=width: (h, w)
        resized, scaled = scale(images, targets)
        assert resized.shape == (2, 3, height, width)
        torch.testing.assert_close(scaled[:, 2:], targets[:, 2:] * torch.tensor([width, height] * 2) / 96)
        outputs = model(resized)
        assert [o.shape[2:] for o in outputs] == [(height // s, width // s) for s in model.strides]
        losses = loss_fn(outputs, scaled)
        assert torch.isfinite(losses["total"]), (height, losses)
        seen.add(height)
    assert seen == {64, 96, 128}  # multiples of 32 within 48..144


def test_draws_are_seeded_per_epoch():
    a, b = MultiScale([320, 320], 32, seed=3), MultiScale([320, 320], 32, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert [a.draw() for _ in range(20)] == [b.draw() for _ in range(20)]


def test_training_with_multi_scale_runs(tmp_path, capfd):
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--multi-scale", "--multi-scale-range", "0.5,1.5", "--epochs", "1",
                              "--batch-size", "2", "--input-shape", "64", "--workers", "0", "--device", "cpu",
                              "--no-preview", "--save-dir", str(tmp_path / "r")]) == 0
    assert "multi-scale training: batch sizes drawn from 32x32, 64x64, 96x96" in capfd.readouterr().err
