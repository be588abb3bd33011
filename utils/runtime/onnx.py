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
from utils.common.text import printable
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
        config = ModelConfig.from_dict(json.loads(props[CONFIG_KEY]))
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # ValueError covers JSON and ConfigError
        raise ExportError(f"{path}: its '{CONFIG_KEY}' metadata is not a valid model config ({err}); export it "
                          "again with predict.py --export onnx") from None
    check_onnx_graph(proto, Path(path), config)
    return config


def check_onnx_graph(proto, path: Path, config: ModelConfig) -> None:
    """What onnxruntime would otherwise answer with a traceback, or not at all: external data outside the model's
    folder (or beyond its file), an opset this onnx does not know, an input or output that does not match the stored
    config. Each is an ExportError naming the file."""
    import onnx

    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external_data(tensor, path)
    known = onnx.defs.onnx_opset_version()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not 7 <= opset <= known:
        raise ExportError(f"{path} declares ONNX opset {opset}; this onnx/onnxruntime reads 7 to {known}: export it "
                          "again with predict.py --export onnx (or update onnxruntime)")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    height, width = config.input_shape
    expected = ("images", [3, height, width])
    if len(inputs) != 1 or (inputs[0].name, _dims(inputs[0])[1:]) != expected or len(proto.graph.output) != 1:
        found = ", ".join(f"{i.name} {_dims(i)}" for i in inputs)
        raise ExportError(f"{path}: its input is {found or 'missing'}, not one 'images' [batch, 3, {height}, {width}] "
                          "as its stored config says (and one output); export it with predict.py --export onnx")


def _dims(value_info) -> list:
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _check_external_data(tensor, path: Path) -> None:
    """An initializer stored in a side file: the file must be a plain relative name inside the model's folder and
    hold the bytes the model points at."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    target = (path.parent / location).resolve()
    inside = bool(location) and not Path(location).is_absolute() and target.is_relative_to(path.parent.resolve())
    if not inside or not target.is_file():
        raise ExportError(f"{path}: tensor {printable(tensor.name)} points at external data {printable(location)!r}, "
                          "which is not a file inside the model's folder; refused (export it again with "
                          "predict.py --export onnx, which stores every tensor inside the .onnx)")
    try:
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
    except ValueError:
        end = -1
    if not 0 <= end <= target.stat().st_size:
        raise ExportError(f"{path}: tensor {printable(tensor.name)} reads bytes up to {end} of {target.name}, which "
                          f"holds {target.stat().st_size}; the external data is truncated or does not belong to it")


def onnxruntime_session(path: Path, providers: list[str] | None = None):
    """onnxruntime.InferenceSession for `path`; a model onnxruntime refuses (its own checks: an invalid graph, an
    unsupported operator) is an ExportError with the first line of onnxruntime's reason, not a traceback."""
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), session_options(),
                                            providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's pybind errors (Fail, InvalidGraph, ...) derive from Exception only
        if not type(err).__module__.startswith("onnxruntime"):
            raise
        reason = printable(str(err).splitlines()[0] if str(err) else type(err).__name__, 300)
        raise ExportError(f"{path}: onnxruntime cannot load it ({reason}); export it again with predict.py "
                          "--export onnx") from None


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
            import onnxruntime  # noqa: F401  (onnxruntime_session needs it)
        except ImportError as err:
            raise MissingDependencyError(f"running {path} needs onnx and onnxruntime ({err}): "
                                         "pip install -r requirements-dev.txt") from err
        config = read_onnx_config(path)
        if input_shape is not None and list(input_shape) != list(config.input_shape):
            raise ExportError(f"{path} was exported for input {config.input_shape}; it cannot run at "
                              f"{list(input_shape)} (re-export with --input-shape)")
        super().__init__(config, options, config.input_shape)
        self.session = onnxruntime_session(Path(path), providers)

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        images = to_model_input(batch, memory_format=torch.contiguous_format).numpy()
        return torch.from_numpy(self.session.run(None, {"images": images})[0])
