"""ONNX (opset 17, decoding inside, dynamic batch; --int8: onnxruntime static QDQ), see utils.deploy.export."""
from __future__ import annotations

from pathlib import Path

from utils.deploy.export import export_onnx
from utils.deploy.quantize import quantize_onnx
from utils.deploy.targets.base import ExportRequest, ExportTarget


def export(request: ExportRequest) -> list[Path]:
    fp32 = export_onnx(request.model, request.config, request.stem.with_name(f"{request.stem.name}.onnx"),
                       check=request.check)
    if not request.int8:
        return [fp32]
    return [fp32, quantize_onnx(fp32, fp32.with_name(f"{fp32.stem}_int8.onnx"), request.calibration())]


TARGET = ExportTarget(export, "ONNX, run by onnxruntime", int8="<name>_int8.onnx (onnxruntime static QDQ)")
