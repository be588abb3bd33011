"""ONNX export with decoding inside, a check against PyTorch through onnxruntime.

`utils.runtime.onnx.OnnxDetector` runs the exported file.

The exported graph maps `images` float32 [B, 3, H, W] (RGB in [0, 1], letterboxed) to `predictions` float32
[B, N, 5 + nc]: (x1, y1, x2, y2) in input pixels, objectness, class probabilities (utils.model.decode.decode_outputs),
with a dynamic batch axis and a fixed H x W. NMS stays outside the graph (torchvision's batched_nms, as in PyTorch).
The ModelConfig is stored as JSON in the model's metadata_props, so an .onnx file is self-describing like our
checkpoints.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.model.config import ModelConfig
from utils.model.decode import decode_outputs
from utils.runtime.onnx import CONFIG_KEY, ExportError

LOGGER = logging.getLogger(__name__)
OPSET = 17
RELATIVE_TOLERANCE = 1e-3  # |onnx - torch| <= 1e-3 * max(1, |torch|) elementwise


class DecodedModel(nn.Module):
    """model + decode_outputs in one module, so the exported graph returns decoded boxes."""

    def __init__(self, model: nn.Module, config: ModelConfig, input_shape: Sequence[int]):
        super().__init__()
        self.model, self.config, self.input_shape = model, config, tuple(input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return decode_outputs(self.model(images), self.config, self.input_shape)


def export_onnx(model: nn.Module, config: ModelConfig, path: str | Path, input_shape: Sequence[int] | None = None,
                opset: int = OPSET, check: bool = True) -> Path:
    """Write `path` (.onnx) for eval-mode `model`; with `check` and onnxruntime installed, compare it to PyTorch
    on a random batch of 2 (raises ExportError beyond RELATIVE_TOLERANCE)."""
    import onnx  # local: an optional dependency (requirements-dev.txt) that only exporting and .onnx files need

    path = Path(path).with_suffix(".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(int(s) for s in (input_shape or config.input_shape))
    wrapped = DecodedModel(model.eval(), config, input_shape).eval()
    example = torch.rand(1, 3, *input_shape)
    with warnings.catch_warnings():
        # the legacy TorchScript exporter is deprecated but needs no onnxscript; shapes are fixed except batch
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["predictions"],
                          dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}})
    proto = onnx.load(str(path))
    stored = config.to_dict() | {"input_shape": list(input_shape)}
    onnx.helper.set_model_props(proto, {CONFIG_KEY: json.dumps(stored), "opset": str(opset),
                                        "output_format": "x1,y1,x2,y2 (input px), objectness, class probs"})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    LOGGER.info("exported %s (opset %d, input [batch, 3, %d, %d])", path, opset, *input_shape)
    if check:
        check_onnx(path, wrapped, input_shape)
    return path


def check_onnx(path: str | Path, wrapped: nn.Module, input_shape: Sequence[int], batch: int = 2) -> float | None:
    """Max abs difference between onnxruntime and PyTorch on one random batch; None when onnxruntime is absent."""
    try:
        import onnxruntime  # local: optional dependency, see export_onnx
    except ImportError:
        LOGGER.warning("onnxruntime is not installed; %s was not checked against PyTorch", path)
        return None
    images = torch.rand(batch, 3, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = wrapped(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    diff = np.abs(got - expected)
    worst = float((diff / np.maximum(1.0, np.abs(expected))).max())
    LOGGER.info("onnxruntime vs PyTorch on a batch of %d: max abs diff %.3g, max relative diff %.3g",
                batch, float(diff.max()), worst)
    if got.shape != expected.shape or worst > RELATIVE_TOLERANCE:
        raise ExportError(f"{path} does not reproduce PyTorch: shape {got.shape} vs {expected.shape}, max relative "
                          f"difference {worst:.3g} > {RELATIVE_TOLERANCE}")
    return float(diff.max())
