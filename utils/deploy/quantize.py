"""Post-training int8 quantization of an exported ONNX model (onnxruntime static quantization, QDQ format).

On CPUs with VNNI (AVX512-VNNI or AVX-VNNI) onnxruntime runs int8 convolutions about twice as fast as fp32; on this
project's 2-core reference CPU, where bf16 is slower than fp32, it is the fastest CPU path (see benchmarks/bench_infer).

- Weights are int8 per output channel, activations uint8 per tensor; activation ranges come from calibration images
  letterboxed exactly as at inference (BaseDetector.prepare), so the ranges match what the model will see.
- Only the network is quantized. The decoding (sigmoid, exp, grid, anchors) stays fp32, and so do the heads' last
  1x1 convolutions: their raw outputs carry box offsets and logits that one shared 8-bit scale would coarsen, and they
  cost under 1% of the FLOPs.
- The ModelConfig metadata is carried over, so the result runs anywhere an exported .onnx does
  (`predict.py --weights model_int8.onnx`, `eval.py --weights model_int8.onnx`).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from utils.common.boxes import letterbox
from utils.common.errors import MissingDependencyError, UserError
from utils.common.image_io import to_model_input

LOGGER = logging.getLogger(__name__)

# Ops quantized inside the network: chains of conv -> leaky ReLU -> max-pool / concat / upsample then stay in int8
# without a dequantize-quantize pair between every two of them.
QUANTIZED_OPS = ("Conv", "LeakyRelu", "MaxPool", "Concat", "Resize")
NETWORK_SCOPE = "/model/"  # node-name prefix of YoloBody inside utils.deploy.export.DecodedModel
DEFAULT_CALIBRATION_IMAGES = 100
QUANTIZATION_KEY = "quantization"


class QuantizationError(UserError, RuntimeError):
    """An ONNX file that cannot be quantized, or calibration without images; the message says what to do."""


def output_convs(graph) -> set[str]:
    """Names of the network's nodes whose outputs leave the network (the heads' last convolutions)."""
    network = {n.name for n in graph.node if n.name.startswith(NETWORK_SCOPE)}
    produced_by = {out: n.name for n in graph.node if n.name in network for out in n.output}
    return {produced_by[i] for n in graph.node if n.name not in network for i in n.input if i in produced_by}


def nodes_to_quantize(graph) -> list[str]:
    """The network nodes of QUANTIZED_OPS types, less the output convolutions."""
    keep_float = output_convs(graph)
    names = [n.name for n in graph.node
             if n.name.startswith(NETWORK_SCOPE) and n.op_type in QUANTIZED_OPS and n.name not in keep_float]
    if not names:
        raise QuantizationError(f"no '{NETWORK_SCOPE}*' nodes to quantize: the file was not written by "
                                "utils.deploy.export.export_onnx (predict.py --export onnx); export it again with it")
    return names


def calibration_reader(canvases: Sequence[np.ndarray], input_name: str = "images"):
    """A CalibrationDataReader over letterboxed uint8 canvases [H, W, 3], one image per batch."""
    from onnxruntime.quantization import CalibrationDataReader  # local: optional dependency, see quantize_onnx

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(canvases)

        def get_next(self) -> dict[str, np.ndarray] | None:
            canvas = next(self.items, None)
            if canvas is None:
                return None
            return {input_name: to_model_input(canvas[None], memory_format=torch.contiguous_format).numpy()}

    return _Reader()


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, canvases: Iterable[np.ndarray],
                  symmetric_int8: bool = False) -> Path:
    """Quantize `fp32_path` (from export_onnx) to int8 at `out_path`, calibrated on `canvases` (uint8 [H, W, 3]
    letterboxed to the model's input). Activation ranges are min-max: entropy and percentile ranges did no better
    on a trained raccoon model (all about -0.09 mAP50; OpenVINO's int8 with bias correction kept it, see
    docs/deployment.md), and ranges after the leaky ReLU were slower than fp32. symmetric_int8: signed int8
    activations with zero point 0, the only QDQ form TensorRT builds int8 engines from
    (utils.deploy.targets.tensorrt)."""
    try:  # local: optional dependencies (requirements-dev.txt); onnxruntime.quantization also takes ~0.9 s to import
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError as err:
        raise MissingDependencyError(f"int8 quantization needs onnx and onnxruntime ({err}): "
                                     "pip install -r requirements-dev.txt") from err

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    canvases = list(canvases)  # 100 canvases at 416 are 52 MB
    if not canvases:
        raise QuantizationError("no calibration images: give --source a folder, glob or image the model will see")
    source = onnx.load(str(fp32_path))
    reader = calibration_reader(canvases, source.graph.input[0].name)
    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-pass (constant folding, shape inference); its symbolic shape inference
        # cannot follow the decoder's batch-dependent grid, and ONNX's own inference is enough for QDQ.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with _root_logger_at(logging.WARNING):  # onnxruntime logs a line per shared bias through the root logger
            quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric_int8 else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=nodes_to_quantize(source.graph),
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": symmetric_int8})
    _copy_metadata(source, out_path, f"int8 static QDQ, per-channel weights; min-max calibration on "
                                     f"{len(canvases)} calibration images")
    LOGGER.info("quantized %s -> %s (%d calibration images)", fp32_path.name, out_path, len(canvases))
    return out_path


@contextlib.contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(level, before))
    try:
        yield
    finally:
        root.setLevel(before)


def _copy_metadata(source, out_path: Path, description: str) -> None:
    """quantize_static drops metadata_props; put the ModelConfig (and a note on the quantization) back."""
    import onnx  # local: optional dependency, see quantize_onnx

    quantized = onnx.load(str(out_path))
    props = {p.key: p.value for p in source.metadata_props} | {QUANTIZATION_KEY: description}
    onnx.helper.set_model_props(quantized, props)
    onnx.save(quantized, str(out_path))


def letterboxed(images: Iterable[np.ndarray], input_shape: Sequence[int], limit: int) -> Iterator[np.ndarray]:
    """At most `limit` RGB images letterboxed onto the model canvas, the way inference prepares them."""
    for count, image in enumerate(images):
        if count >= limit:
            return
        yield letterbox(image, input_shape)[0]
