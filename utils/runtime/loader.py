"""One way from a weights path to something that runs, for predict.py and eval.py alike.

`load_runnable` takes any weights file this project reads (our .pth checkpoint, a bare reference-layout state_dict,
Darknet .weights with its .cfg, or an export: .onnx, OpenVINO .xml, .torchscript, NCNN .ncnn.param, TensorRT .engine,
Core ML .mlpackage; fp32 or int8) and returns a `Loaded`: a PyTorch model in eval mode on its device, or the detector
of the export's runtime backend (utils.runtime.backends, chosen by the file's name), together with the ModelConfig
that describes it. A checkpoint file is read once. It wraps utils.model.checkpoint.load_model, the one reader of
weights files, whose neighbours serve train.py: load_pretrained (--weights, a partial load for transfer learning) and
read_training_checkpoint (--resume).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nets.yolo import YoloBody
from utils.common.device import select_device
from utils.common.errors import MissingFileError
from utils.common.paths import check_user_path
from utils.model.checkpoint import latest_weights, load_model
from utils.model.config import ModelConfig, parse_input_shape, read_classes
from utils.model.download import local_weights
from utils.runtime.backends import RUNTIME_BACKENDS, file_kind
from utils.runtime.detector import BaseDetector, Detector

LOGGER = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A weights file ready to run: `model` (PyTorch, eval mode, on `device`) or `exported` (the detector of an
    exported file's runtime backend, `kind` naming it)."""

    path: Path
    config: ModelConfig
    device: torch.device
    model: YoloBody | None = None
    exported: BaseDetector | None = None
    kind: str = "pytorch"  # or the runtime backend's name (utils.runtime.backends)

    @property
    def onnx(self) -> BaseDetector | None:
        """The exported detector when the file is an .onnx (kept for callers from before the other backends)."""
        return self.exported if self.kind == "onnx" else None

    @property
    def runnable(self) -> YoloBody | BaseDetector:
        """What utils.eval.evaluation runs: the PyTorch model, or the exported detector (which decodes by itself)."""
        return self.model if self.model is not None else self.exported

    def detector(self, optimize: bool = True, precision: str = "auto", compile: bool = False) -> BaseDetector:
        """A detector at config.input_shape: an export's as it is, or a Detector over the model (see
        utils.runtime.detector.Detector for optimize, precision and compile)."""
        if self.exported is not None:
            return self.exported
        return Detector(self.model, self.config, self.device, optimize=optimize, precision=precision,
                        compile=compile)


def load_runnable(path: str | Path | None, names: str | Path | Sequence[str] | None = None,
                  phi: int | str | None = None, cfg: str | Path | None = None, device: str | None = None,
                  input_shape: str | int | Sequence[int] | None = None, sha256: str | None = None) -> Loaded:
    """Load `path` (None: the newest logs/*/best.pth) into something that runs.

    names: a class-names file (or the names) for bare state_dicts and Darknet files; phi: the attention of a bare
    state_dict; cfg: the Darknet .cfg of a .weights file; device: for PyTorch models (an export runs where its
    backend does, and a --device asking for another is ignored with a warning); input_shape: run at this size instead
    of the stored one (an export is fixed to the size it was exported at). An http(s) URL is downloaded once into the
    cache (utils/download.py; sha256: its expected hash).
    """
    path = local_weights(str(path), sha256) if path else latest_weights()
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    kind = file_kind(path)
    if kind is not None:
        loaded = load_exported(path, kind, device, shape)
    else:
        classes = read_classes(names) if isinstance(names, (str, Path)) else names
        model, config = load_model(path, list(classes) if classes is not None else None, phi, cfg)
        if shape is not None:
            config = ModelConfig.from_dict(config.to_dict() | {"input_shape": shape})
        chosen = select_device(device)
        loaded = Loaded(path, config, chosen, model=model.to(chosen))
    LOGGER.info("weights %s: %d classes, attention %s, input %s", path, loaded.config.num_classes,
                loaded.config.attention, loaded.config.input_shape)
    return loaded


def load_exported(path: Path, kind: str, device: str | None, shape: list[int] | None) -> Loaded:
    """An exported file run by its backend, where that backend runs (the CPU, or CUDA for TensorRT)."""
    backend = RUNTIME_BACKENDS.get(kind)
    check_user_path(path, "weights file", folder_ok=kind == "coreml")  # a FIFO would block the read forever
    if not path.exists():
        raise MissingFileError(f"weights file {path} not found; give an existing file to --weights")
    if device not in (None, "") and not str(device).startswith(backend.device):
        LOGGER.warning("--device %s ignored: %s runs on %s (%s)", device, path.name, backend.device.upper(), kind)
    detector = backend.detector(path, input_shape=shape)
    return Loaded(path, detector.config, getattr(detector, "device", torch.device("cpu")), exported=detector, kind=kind)
