"""Core ML packages (.mlpackage, written by coremltools; the network without the decoding, config in the package's
user metadata). Core ML runs only on Apple platforms: elsewhere a package can be read and checked
(`read_coreml_config`, `check_coreml_package`) but not run, and loading it to run says so in one line."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.model.config import ModelConfig
from utils.runtime.detector import DetectOptions
from utils.runtime.exported import (
    CONFIG_KEY,
    ExportError,
    RawOutputDetector,
    check_fixed_shape,
    config_from_json,
    require,
)

FIX = "export it again with predict.py --export coreml"
INPUT_NAME = "images"


def load_package(path: Path, load: bool = False):
    """The coremltools MLModel of `path` (compiled for running only when `load`)."""
    coremltools = require("coremltools", f"reading {path.name}", "coremltools")
    if not (path / "Manifest.json").is_file():
        raise ExportError(f"{path} is not a Core ML package (no Manifest.json); {FIX}")
    try:
        return coremltools.models.MLModel(str(path), skip_model_load=not load)
    except Exception as err:  # coremltools raises bare Exception (and protobuf errors) for unreadable packages
        raise ExportError(f"{path} is not a readable Core ML package ({type(err).__name__}: "
                          f"{str(err)[:200]}); {FIX}") from None


def read_coreml_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    metadata = dict(load_package(path).get_spec().description.metadata.userDefined)
    if CONFIG_KEY not in metadata:
        raise ExportError(f"{path} has no '{CONFIG_KEY}' metadata, so its classes and input size are unknown; {FIX}")
    return config_from_json(metadata[CONFIG_KEY], path, FIX)


def check_coreml_package(path: str | Path) -> dict:
    """The structural check that can run anywhere: one input [1, 3, H, W] at the config's size and one output per head
    with A * (5 + nc) channels at stride s. Returns {input, outputs, config}; raises ExportError on a mismatch."""
    path = Path(path)
    config = read_coreml_config(path)
    description = load_package(path).get_spec().description
    shapes = {io.name: list(io.type.multiArrayType.shape) for io in [*description.input, *description.output]}
    height, width = config.input_shape
    expected_in = {INPUT_NAME: [1, 3, height, width]}
    expected_out = [[1, len(mask) * (5 + config.num_classes), height // s, width // s]
                    for mask, s in zip(config.anchors_mask, config.strides, strict=True)]
    got_in = {io.name: shapes[io.name] for io in description.input}
    got_out = [shapes[io.name] for io in description.output]
    if got_in != expected_in or got_out != expected_out:
        raise ExportError(f"{path}: inputs {got_in} / outputs {got_out} do not match its config "
                          f"({expected_in} / {expected_out}); {FIX}")
    return {"input": got_in, "outputs": got_out, "config": config}


class CoreMLDetector(RawOutputDetector):
    """The Detector interface over a .mlpackage: on macOS only (Core ML does not run on Linux or Windows).
    Written for macOS and not run in this project's CI, which is Linux."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None):
        path = Path(path)
        config = read_coreml_config(path)
        check_fixed_shape(path, config, input_shape)
        if platform.system() != "Darwin":
            raise ExportError(f"{path} is a Core ML package: Core ML runs only on macOS/iOS, not on "
                              f"{platform.system()}; use the .onnx or OpenVINO export here")
        super().__init__(config, options)
        self.model = load_package(path, load=True)
        self.output_names = [o.name for o in self.model.get_spec().description.output]

    def raw_outputs(self, images: np.ndarray) -> list[np.ndarray]:
        per_image = [self.model.predict({INPUT_NAME: image[None]}) for image in images]  # batch 1 package
        return [np.concatenate([out[name] for out in per_image]) for name in self.output_names]
