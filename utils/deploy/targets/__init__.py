"""Export targets by name: `predict.py --export NAME` and `python -m utils.benchmark --formats NAME`.

A new target is one module here (an `export(request) -> [paths]` function and its `TARGET`) plus one
`EXPORT_TARGETS.register(...)` line below; the file it writes is run by a backend of utils.runtime.backends.
"""
from __future__ import annotations

from utils.common.registry import Registry
from utils.deploy.targets import coreml, darknet, ncnn, onnx, openvino, tensorrt, torchscript
from utils.deploy.targets.base import ExportRequest, ExportTarget

__all__ = ["EXPORT_TARGETS", "ExportRequest", "ExportTarget"]

EXPORT_TARGETS: Registry[ExportTarget] = Registry("export target")
EXPORT_TARGETS.register("onnx")(onnx.TARGET)
EXPORT_TARGETS.register("openvino")(openvino.TARGET)
EXPORT_TARGETS.register("torchscript")(torchscript.TARGET)
EXPORT_TARGETS.register("ncnn")(ncnn.TARGET)
EXPORT_TARGETS.register("coreml")(coreml.TARGET)
EXPORT_TARGETS.register("tensorrt")(tensorrt.TARGET)
EXPORT_TARGETS.register("darknet")(darknet.TARGET)
