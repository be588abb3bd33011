"""TensorRT engines (.engine) built from the ONNX export on an NVIDIA GPU: fp16, and with --int8 an int8 engine
built from an explicitly quantized ONNX (symmetric int8 QDQ by onnxruntime, calibrated on the calibration images:
TensorRT's recommended way; its implicit calibrators are deprecated). Dynamic batch 1..MAX_BATCH (optimised for
OPT_BATCH); the ModelConfig is the file's header (utils.runtime.tensorrt). An engine is tied to the GPU and TensorRT
version that built it, so build it where it will run."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from utils.deploy.export import export_onnx
from utils.deploy.quantize import quantize_onnx
from utils.deploy.targets.base import ExportRequest, ExportTarget, remove_partial
from utils.model.config import ModelConfig
from utils.runtime.exported import ExportError, config_json, require
from utils.runtime.tensorrt import write_engine_file

LOGGER = logging.getLogger(__name__)
OPT_BATCH, MAX_BATCH = 8, 32
WORKSPACE_BYTES = 4 << 30


def export(request: ExportRequest) -> list[Path]:
    tensorrt = require("tensorrt", "--export tensorrt", "tensorrt", in_extras=False)
    if not torch.cuda.is_available():
        raise ExportError("--export tensorrt builds its engine on an NVIDIA GPU, and none is visible here; build it "
                          "on the machine that will run it (or use --export onnx / openvino for a CPU)")
    fp16 = request.stem.with_name(f"{request.stem.name}.engine")
    written = [fp16]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(request.model, request.config, Path(tmp) / "model.onnx", check=request.check)
            build_engine(tensorrt, onnx_path, fp16, request.config, int8=False)
            if request.int8:
                written.append(fp16.with_name(f"{fp16.stem}_int8.engine"))
                qdq = quantize_onnx(onnx_path, Path(tmp) / "model_int8.onnx", request.calibration(),
                                    symmetric_int8=True)
                build_engine(tensorrt, qdq, written[-1], request.config, int8=True)
    except BaseException:
        remove_partial(*written)
        raise
    return written


def build_engine(tensorrt, onnx_path: Path, path: Path, config: ModelConfig, int8: bool) -> Path:
    """Parse `onnx_path` and build an engine at `path` (fp16 layers; int8 where the graph's QDQ nodes say)."""
    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    builder = tensorrt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10+: explicit batch is the only mode
    parser = tensorrt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse the ONNX export: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    builder_config.set_flag(tensorrt.BuilderFlag.FP16)
    if int8:
        builder_config.set_flag(tensorrt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    shape = tuple(config.input_shape)
    profile.set_shape("images", (1, 3, *shape), (OPT_BATCH, 3, *shape), (MAX_BATCH, 3, *shape))
    builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build the {'int8' if int8 else 'fp16'} engine (see its log above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_engine_file(path, config_json(config), bytes(serialized))
    LOGGER.info("TensorRT %s engine %s (batch 1..%d)", "int8" if int8 else "fp16", path, MAX_BATCH)
    return path


TARGET = ExportTarget(export, "TensorRT engine (fp16), run by TensorRT on an NVIDIA GPU",
                      int8="<name>_int8.engine (explicit int8 QDQ, calibrated)", runs_here="NVIDIA GPU only")
