"""predict.py --compile: the inductor-compiled Detector gives the eager Detector's detections."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.model.config import ModelConfig, build_model
from utils.runtime.detector import DetectOptions, Detector


@pytest.mark.slow
def test_compiled_detector_matches_eager():
    torch.manual_seed(0)
    config = ModelConfig(classes=["a", "b"], attention="cbam", input_shape=[64, 64])
    model = build_model(config).eval()
    options = DetectOptions(conf_thres=0.0, iou_thres=0.5, max_det=20)
    eager = Detector(model, config, "cpu", options, precision="fp32")
    compiled = Detector(model, config, "cpu", options, precision="fp32", compile=True)
    compiled.warmup([2])
    images = [np.random.default_rng(i).integers(0, 255, (48, 80, 3), dtype=np.uint8) for i in range(2)]
    canvas = np.stack([eager.prepare(img).canvas for img in images])
    for a, b in zip(eager.raw_outputs(canvas), compiled.raw_outputs(canvas), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    for a, b in zip(eager(images), compiled(images), strict=True):
        assert a.shape == b.shape
