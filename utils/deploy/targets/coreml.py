"""Core ML (.mlpackage, ML program, fp32 compute precision) by coremltools: the fused network traced by PyTorch,
batch 1, without the decoding (coremltools cannot convert the grid arithmetic's integer casts); the ModelConfig in
the package's user metadata. Core ML runs only on Apple platforms, so here the package is converted and its
structure checked (input, one output per head with the config's shapes, metadata), not run."""
from __future__ import annotations

import logging
from pathlib import Path

from utils.deploy.targets.base import ExportRequest, ExportTarget, remove_partial, traced
from utils.runtime.coreml import INPUT_NAME, check_coreml_package
from utils.runtime.detector import fuse_conv_bn
from utils.runtime.exported import CONFIG_KEY, config_json, require

LOGGER = logging.getLogger(__name__)


def export(request: ExportRequest) -> list[Path]:
    coremltools = require("coremltools", "--export coreml", "coremltools")
    path = request.stem.with_name(f"{request.stem.name}.mlpackage")
    config = request.config
    script = traced(fuse_conv_bn(request.model), config)
    outputs = [coremltools.TensorType(name=f"stride{stride}") for stride in config.strides]
    try:
        model = coremltools.convert(script, inputs=[coremltools.TensorType(name=INPUT_NAME, shape=(1, 3,
                                                                                                  *config.input_shape))],
                                    outputs=outputs, convert_to="mlprogram",
                                    compute_precision=coremltools.precision.FLOAT32,
                                    minimum_deployment_target=coremltools.target.iOS15)
        model.user_defined_metadata[CONFIG_KEY] = config_json(config)
        model.short_description = f"YOLOv4-tiny ({config.attention} attention), raw head outputs; classes: " \
                                  f"{', '.join(config.classes)[:200]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(path))
        structure = check_coreml_package(path)
    except BaseException:
        remove_partial(path)
        raise
    LOGGER.info("Core ML package %s: input %s, outputs %s (structure checked; Core ML runs only on Apple platforms)",
                path.name, structure["input"], structure["outputs"])
    return [path]


TARGET = ExportTarget(export, "Core ML ML program (.mlpackage), run by Core ML on macOS/iOS",
                      runs_here="not on Linux: converted and checked, not run")
