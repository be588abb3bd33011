"""What an export target is: a function from an ExportRequest to the files it wrote, and whether it does int8.

Every fp32 export is checked against PyTorch when it is written (`check_against_pytorch`): the file is loaded back
through its runtime backend (utils.runtime.backends), exactly as predict.py and eval.py will load it, and its decoded
outputs on a fixed random batch must equal the PyTorch model's within TOLERANCE: box corners within 1e-3 of the input
size (0.4 px at 416), objectness and class probabilities within 1e-3. So a conversion that loses accuracy fails at
export, not in deployment. int8 files are other models by design: their accuracy is measured on
data (`python -m utils.benchmark`, `eval.py --weights <file>`).
"""
from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils.model.config import ModelConfig
from utils.runtime.backends import RUNTIME_BACKENDS, file_kind
from utils.runtime.detector import Detector
from utils.runtime.exported import ExportError

LOGGER = logging.getLogger(__name__)
TOLERANCE = 1e-3  # boxes: fraction of the input size; objectness and class probabilities: absolute


@dataclass
class ExportRequest:
    """One export: `model` (eval mode, CPU, unfused), its config, and `stem` (folder / name: each target adds its
    own endings, e.g. best -> best.xml + best.bin). `calibration()` gives the letterboxed uint8 canvases [H, W, 3]
    of the int8 calibration images; it is called only when `int8` and the target quantizes."""

    model: nn.Module
    config: ModelConfig
    stem: Path
    int8: bool = False
    calibration: Callable[[], list[np.ndarray]] = field(default=lambda: [])
    check: bool = True


@dataclass(frozen=True)
class ExportTarget:
    """An export format: `export(request)` writes its files (the runnable file first, an int8 variant last) and
    returns their paths. `int8`: what --int8 adds ("" = no int8); `runs_here`: where its files run."""

    export: Callable[[ExportRequest], list[Path]]
    description: str
    int8: str = ""
    runs_here: str = "CPU"
    benchmark: bool = True  # a row of python -m utils.benchmark (Darknet files are the PyTorch model, run by it)


def check_against_pytorch(path: Path, model: nn.Module, config: ModelConfig, batch: int = 2) -> float:
    """The largest difference between `path` (run by its backend) and the fp32 PyTorch model on one batch of random
    canvases, in units of TOLERANCE (box corners over the input size, scores as they are); ExportError above 1.
    Random pixels drive a trained network to activations beyond those of real images: a strict test."""
    backend = RUNTIME_BACKENDS.get(file_kind(path))
    loaded = backend.detector(path)
    canvases = np.random.default_rng(0).integers(0, 256, (batch, *config.input_shape, 3), dtype=np.uint8)
    reference = Detector(model, config, "cpu", optimize=False, precision="fp32").forward(canvases)
    got = loaded.forward(canvases).float()
    if got.shape != reference.shape:
        raise ExportError(f"{path} does not reproduce PyTorch: output shape {tuple(got.shape)} vs "
                          f"{tuple(reference.shape)}")
    gap = (got - reference).abs()
    box = float(gap[..., :4].max()) / max(config.input_shape)
    score = float(gap[..., 4:].max())
    LOGGER.info("%s vs PyTorch on a batch of %d: box corners within %.2g of the input size, scores within %.2g",
                path.name, batch, box, score)
    if not max(box, score) <= TOLERANCE:  # also catches NaN
        raise ExportError(f"{path} does not reproduce PyTorch: box corners differ by {box:.3g} of the input size, "
                          f"scores by {score:.3g} (tolerance {TOLERANCE})")
    return max(box, score) / TOLERANCE


def remove_partial(*paths: Path) -> None:
    """Delete what a failed export left (so no half-written model is mistaken for a good one)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def traced(module: nn.Module, config: ModelConfig, channels_last: bool = False) -> torch.jit.ScriptModule:
    """torch.jit.trace of eval-mode `module` on one image at the config's size (shapes are fixed but the batch)."""
    example = torch.rand(1, 3, *config.input_shape)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shapes are fixed: that is intended
        return torch.jit.trace(module.eval(), example, check_trace=False)
