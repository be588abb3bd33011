"""Run a TensorRT engine (.engine, fp16 or int8, built by utils.deploy.targets.tensorrt) on an NVIDIA GPU.

File layout (as Ultralytics' engines): a 4-byte little-endian length, the ModelConfig JSON, then the serialized
engine. The engine holds the ONNX export's graph (decoding inside, dynamic batch up to the profile's maximum) and is
run with torch CUDA tensors as its buffers (no pycuda). An engine is tied to the GPU model and TensorRT version that
built it. TensorRT engines are deserialized native code: load only engines you built.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.common.image_io import to_model_input
from utils.model.config import ModelConfig
from utils.runtime.detector import BaseDetector, DetectOptions
from utils.runtime.exported import MAX_CONFIG_BYTES, ExportError, check_fixed_shape, config_from_json, require

FIX = "build it again with predict.py --export tensorrt on this GPU"
HEADER = struct.Struct("<I")


def write_engine_file(path: Path, config_text: str, engine: bytes) -> None:
    data = config_text.encode("utf-8")
    path.write_bytes(HEADER.pack(len(data)) + data + bytes(engine))


def read_engine_file(path: str | Path) -> tuple[ModelConfig, bytes]:
    """(config, serialized engine) of an .engine file written by write_engine_file; ExportError when it is not."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(HEADER.size)
        length = HEADER.unpack(head)[0] if len(head) == HEADER.size else -1
        if not 0 < length <= MAX_CONFIG_BYTES:
            raise ExportError(f"{path} does not start with this project's engine header (config length {length}); "
                              f"{FIX}")
        text = handle.read(length)
        engine = handle.read()
    if len(text) != length or not engine:
        raise ExportError(f"{path} ends before its engine (truncated); {FIX}")
    return config_from_json(text, path, FIX), engine


class TensorRTDetector(BaseDetector):
    """The Detector interface over a TensorRT engine on CUDA device `device` (default cuda:0)."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None, device: str | None = None):
        path = Path(path)
        config, serialized = read_engine_file(path)
        check_fixed_shape(path, config, input_shape)
        if not torch.cuda.is_available():
            raise ExportError(f"{path} is a TensorRT engine: it runs only on an NVIDIA GPU, and none is visible "
                              "here; use the .onnx or OpenVINO export on a CPU")
        tensorrt = require("tensorrt", f"running {path.name}", "tensorrt", in_extras=False)
        super().__init__(config, options, config.input_shape)
        self.device = torch.device(device or "cuda:0")
        runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise ExportError(f"{path}: TensorRT could not deserialize the engine (another GPU or TensorRT "
                              f"version?); {FIX}")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(self.engine.get_tensor_profile_shape("images", 0)[2][0])

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        images = to_model_input(batch, self.device, torch.contiguous_format)
        return torch.cat([self._run(chunk) for chunk in images.split(self.max_batch)]).cpu()

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape("images", tuple(images.shape))
        shape = tuple(self.context.get_tensor_shape("predictions"))
        output = torch.empty(shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address("images", images.data_ptr())
        self.context.set_tensor_address("predictions", output.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return output
