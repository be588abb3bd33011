"""ONNX export with decoding inside, a check against PyTorch through onnxruntime, and `OnnxDetector`.

The exported graph maps `images` float32 [B, 3, H, W] (RGB in [0, 1], letterboxed) to `predictions` float32
[B, N, 5 + nc]: (x1, y1, x2, y2) in input pixels, objectness, class probabilities (utils.decode.decode_outputs),
with a dynamic batch axis and a fixed H x W. NMS stays outside the graph (torchvision's batched_nms, as in PyTorch).
The ModelConfig is stored as JSON in the model's metadata_props, so an .onnx file is self-describing like our
checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.config import ModelConfig
from utils.decode import decode_outputs
from utils.errors import MissingDependencyError, UserError
from utils.image_io import to_model_input
from utils.inference import BaseDetector, DetectOptions

LOGGER = logging.getLogger(__name__)
OPSET = 17
CONFIG_KEY = "model_config"
RELATIVE_TOLERANCE = 1e-3  # |onnx - torch| <= 1e-3 * max(1, |torch|) elementwise


class ExportError(UserError, RuntimeError):
    """An export that failed or does not reproduce PyTorch's outputs."""


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


def read_onnx_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in an .onnx file by export_onnx."""
    import onnx  # local: optional dependency, see export_onnx
    from google.protobuf.message import DecodeError  # onnx's own dependency

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as err:
        raise ExportError(f"{path} is not a readable ONNX model ({err}); it may be truncated or another kind of "
                          "file: export it again with predict.py --export onnx") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY not in props:
        raise ExportError(f"{path} has no '{CONFIG_KEY}' metadata, so its classes and input size are unknown; "
                          "export it with predict.py --export onnx")
    try:
        return ModelConfig.from_dict(json.loads(props[CONFIG_KEY]))
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # ValueError covers JSON and ConfigError
        raise ExportError(f"{path}: its '{CONFIG_KEY}' metadata is not a valid model config ({err}); export it "
                          "again with predict.py --export onnx") from None


def session_options():
    """onnxruntime options for detection: no busy-waiting of idle pool threads between runs (by default they spin,
    taking the cores that reading and letterboxing the next image and NMS on the last one need)."""
    import onnxruntime  # local: optional dependency, see export_onnx

    options = onnxruntime.SessionOptions()
    if os.environ.get("YOLO_ORT_SPIN", "0") != "1":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxDetector(BaseDetector):
    """The Detector interface over an exported .onnx file, run by onnxruntime (CPU unless `providers` says)."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None, providers: list[str] | None = None):
        try:  # local: optional dependencies, see export_onnx
            import onnx  # noqa: F401  (read_onnx_config needs it: fail here, with the install hint)
            import onnxruntime
        except ImportError as err:
            raise MissingDependencyError(f"running {path} needs onnx and onnxruntime ({err}): "
                                         "pip install -r requirements-dev.txt") from err
        config = read_onnx_config(path)
        if input_shape is not None and list(input_shape) != list(config.input_shape):
            raise ExportError(f"{path} was exported for input {config.input_shape}; it cannot run at "
                              f"{list(input_shape)} (re-export with --input-shape)")
        super().__init__(config, options, config.input_shape)
        self.session = onnxruntime.InferenceSession(str(path), session_options(),
                                                    providers=providers or ["CPUExecutionProvider"])

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        images = to_model_input(batch, memory_format=torch.contiguous_format).numpy()
        return torch.from_numpy(self.session.run(None, {"images": images})[0])
