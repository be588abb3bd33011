"""Run an exported .onnx file with onnxruntime behind the Detector interface; the ModelConfig it carries."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.common.errors import MissingDependencyError
from utils.common.image_io import to_model_input
from utils.model.config import ModelConfig
from utils.runtime.detector import BaseDetector, DetectOptions
from utils.runtime.exported import CONFIG_KEY, ExportError  # noqa: F401  (CONFIG_KEY: the metadata_props key)


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
