"""Runtime backends by file kind: which class runs an exported file, found from its name.

A new runtime is one module in utils/runtime/ (a BaseDetector subclass taking (path, options, input_shape)) plus one
`RUNTIME_BACKENDS.register(...)` line below. Every backend imports its package lazily, so listing them costs nothing
and a missing package is one line saying what to pip install.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.common.registry import Registry
from utils.runtime.coreml import CoreMLDetector
from utils.runtime.detector import BaseDetector
from utils.runtime.ncnn import NcnnDetector
from utils.runtime.onnx import OnnxDetector
from utils.runtime.openvino import OpenVinoDetector
from utils.runtime.tensorrt import TensorRTDetector
from utils.runtime.torchscript import TorchScriptDetector


@dataclass(frozen=True)
class Backend:
    """How to run one kind of exported file: its name ending, the detector class, and where it runs."""

    suffix: str  # the file name ends with it (".ncnn.param": a double suffix)
    detector: Callable[..., BaseDetector]  # (path, options=None, input_shape=None) -> detector
    device: str = "cpu"  # cpu | cuda: a --device asking for another is ignored with a warning
    package: str = ""  # what pip installs to run it


RUNTIME_BACKENDS: Registry[Backend] = Registry("runtime backend")
RUNTIME_BACKENDS.register("onnx")(Backend(".onnx", OnnxDetector, package="onnxruntime"))
RUNTIME_BACKENDS.register("openvino")(Backend(".xml", OpenVinoDetector, package="openvino"))
RUNTIME_BACKENDS.register("torchscript")(Backend(".torchscript", TorchScriptDetector, package="torch"))
RUNTIME_BACKENDS.register("ncnn")(Backend(".ncnn.param", NcnnDetector, package="ncnn"))
RUNTIME_BACKENDS.register("coreml")(Backend(".mlpackage", CoreMLDetector, package="coremltools (macOS)"))
RUNTIME_BACKENDS.register("tensorrt")(Backend(".engine", TensorRTDetector, device="cuda", package="tensorrt"))


def file_kind(path: str | Path) -> str | None:
    """The backend name for `path` by its name's ending (the longest matching one), or None: a PyTorch or Darknet
    file, read by utils.model.checkpoint."""
    name = Path(path).name.lower()
    matches = [(len(b.suffix), kind) for kind, b in RUNTIME_BACKENDS.items() if name.endswith(b.suffix)]
    return max(matches)[1] if matches else None
