"""Run an OpenVINO IR (.xml + .bin, fp32 or int8) on the CPU behind the Detector interface.

The IR is the ONNX export converted by OpenVINO (utils.deploy.targets.openvino): decoding inside, so its output is
Tensor[B, N, 5 + nc] like the ONNX one, and the ModelConfig rides in the IR's rt_info. Inference precision is fp32
(OpenVINO's CPU plugin would otherwise pick bf16 on CPUs that have it: a different model, however close).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.common.image_io import to_model_input
from utils.runtime.detector import BaseDetector, DetectOptions
from utils.runtime.exported import CONFIG_KEY, ExportError, check_fixed_shape, config_from_json, require

FIX = "export it again with predict.py --export openvino"


def read_ir(path: Path):
    """The IR at `path` as an openvino.Model, or an ExportError naming the file (truncated, no .bin, not an IR)."""
    openvino = require("openvino", f"running {path.name}", "openvino")
    if not path.with_suffix(".bin").is_file():
        raise ExportError(f"{path} has no {path.with_suffix('.bin').name} beside it (the IR's weights); {FIX}")
    try:
        return openvino.Core().read_model(str(path))
    except RuntimeError as err:  # OpenVINO reports any unreadable IR as a RuntimeError, with a long trace in it
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path} is not a readable OpenVINO IR ({reason}); it may be truncated; {FIX}") from None


def read_openvino_config(path: str | Path):
    """The ModelConfig stored in an IR's rt_info by the openvino export target."""
    path = Path(path)
    model = read_ir(path)
    if not model.has_rt_info(CONFIG_KEY):
        raise ExportError(f"{path} has no '{CONFIG_KEY}' in its rt_info, so its classes and input size are unknown; "
                          f"{FIX}")
    return model, config_from_json(model.get_rt_info(CONFIG_KEY).astype(str), path, FIX)


class OpenVinoDetector(BaseDetector):
    """The Detector interface over an OpenVINO IR, compiled for the CPU plugin in fp32 inference precision."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None):
        openvino = require("openvino", f"running {Path(path).name}", "openvino")
        model, config = read_openvino_config(path)
        check_fixed_shape(path, config, input_shape)
        super().__init__(config, options, config.input_shape)
        self.compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        images = to_model_input(batch, memory_format=torch.contiguous_format).numpy()
        outputs = self.request.infer({0: images})
        return torch.from_numpy(np.array(outputs[self.compiled.output(0)]))
