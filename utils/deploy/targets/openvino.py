"""OpenVINO IR (.xml + .bin): the ONNX export converted by OpenVINO, fp32 weights, decoding inside, dynamic batch,
the ModelConfig in the IR's rt_info. --int8: post-training quantization by NNCF (OpenVINO's own tooling) on the
calibration images; as with onnxruntime's int8, only the network is quantized: the decoding and the heads' last
convolutions stay fp32 (utils.deploy.quantize says why)."""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.common.image_io import to_model_input
from utils.deploy.export import export_onnx
from utils.deploy.quantize import NETWORK_SCOPE, QuantizationError, output_convs
from utils.deploy.targets.base import ExportRequest, ExportTarget, check_against_pytorch, remove_partial
from utils.runtime.exported import CONFIG_KEY, config_json, require

QUANTIZATION_KEY = "quantization"


def export(request: ExportRequest) -> list[Path]:
    openvino = require("openvino", "--export openvino", "openvino")
    path = request.stem.with_name(f"{request.stem.name}.xml")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(request.model, request.config, Path(tmp) / "model.onnx", check=False)
        model = openvino.convert_model(str(onnx_path))
        head_convs = output_convs(_onnx_graph(onnx_path))
    model.set_rt_info(config_json(request.config), CONFIG_KEY)
    written = [path, path.with_suffix(".bin")]
    try:
        openvino.save_model(model, str(path), compress_to_fp16=False)
        if request.check:
            check_against_pytorch(path, request.model, request.config)
        if request.int8:
            written += quantize(model, path.with_name(f"{path.stem}_int8.xml"), request, head_convs)
    except BaseException:
        remove_partial(*written)
        raise
    return written[::2] if request.int8 else [path]


def quantize(model, path: Path, request: ExportRequest, head_convs: set[str]) -> list[Path]:
    """NNCF post-training quantization of `model` to `path` (int8 weights and activations), calibrated on
    request.calibration(); returns [xml, bin]."""
    openvino = require("openvino", "--export openvino --int8", "openvino")
    nncf = require("nncf", "--export openvino --int8", "nncf")
    canvases = request.calibration()
    if not canvases:
        raise QuantizationError("no calibration images: give --source a folder, glob or image the model will see")
    dataset = nncf.Dataset(canvases, _model_input)
    # everything outside the network (the decoding) and the heads' last convolutions stay fp32; OpenVINO names a
    # converted ONNX node after it, with a suffix ("<onnx name>/WithoutBiases")
    heads = [f"^{re.escape(name)}(/.*)?$" for name in sorted(head_convs)]
    scope = nncf.IgnoredScope(patterns=[f"^(?!{NETWORK_SCOPE}).*", *heads], validate=False)
    # MIXED: asymmetric activations. Leaky-ReLU outputs reach only a tenth as far below 0 as above, so the default
    # symmetric ranges spend half the 8-bit codes on values that never occur; with the full bias correction (not
    # the fast one) this took a raccoon model from -0.233 to +0.001 mAP50 against fp32 (docs/deployment.md).
    with _quiet("nncf"):  # NNCF logs a line per node it leaves alone
        quantized = nncf.quantize(model, dataset, subset_size=len(canvases), ignored_scope=scope,
                                  preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False)
    quantized.set_rt_info(config_json(request.config), CONFIG_KEY)
    quantized.set_rt_info(f"int8 NNCF post-training quantization (mixed preset: asymmetric activations; full bias "
                          f"correction) on {len(canvases)} calibration images; decoding and head output "
                          f"convolutions fp32", QUANTIZATION_KEY)
    openvino.save_model(quantized, str(path), compress_to_fp16=False)
    return [path, path.with_suffix(".bin")]


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


def _model_input(canvas: np.ndarray) -> np.ndarray:
    """A letterboxed uint8 canvas [H, W, 3] -> the IR's input, float32 [1, 3, H, W] in [0, 1] (as at inference)."""
    return to_model_input(canvas[None], memory_format=torch.contiguous_format).numpy()


def _onnx_graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


TARGET = ExportTarget(export, "OpenVINO IR, run by OpenVINO on the CPU",
                      int8="<name>_int8.xml (NNCF post-training quantization)")
