"""What every exported-model runtime shares: the ModelConfig an export carries, its errors, lazy optional imports,
and the detector base of backends whose file holds the network without the decoding (NCNN, Core ML).

An exported file is untrusted input: its config is parsed as plain JSON and validated by ModelConfig, and a file that
cannot be read (truncated, another kind of file) is one ExportError naming it and saying to export it again.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch

from utils.common.errors import MissingDependencyError, UserError
from utils.common.image_io import to_model_input
from utils.model.config import ModelConfig
from utils.model.decode import decode_outputs
from utils.runtime.detector import BaseDetector, DetectOptions

CONFIG_KEY = "model_config"  # where each export keeps the ModelConfig as JSON (metadata, extra file or side file)
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; anything larger is not ours


class ExportError(UserError, RuntimeError):
    """An export that failed, does not reproduce PyTorch, or a file that cannot be run; the message says what to do."""


EXTRAS = "requirements-export.txt"  # the optional export and runtime packages, one pip install


def require(module: str, what: str, package: str, in_extras: bool = True) -> ModuleType:
    """Import optional `module` for `what`, or one MissingDependencyError line saying what to pip install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        also = f" (or pip install -r {EXTRAS})" if in_extras else ""
        raise MissingDependencyError(f"{what} needs the optional package {package} ({err}): pip install "
                                     f"{package}{also}") from None


def config_from_json(text: str | bytes, path: str | Path, fix: str) -> ModelConfig:
    """The ModelConfig in `text` (JSON) read from `path`, or an ExportError naming the file and `fix`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ExportError(f"{path}: its model config is {len(text)} bytes, not a config of this project; {fix}")
    try:
        return ModelConfig.from_dict(json.loads(text))
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # ValueError covers JSON and ConfigError
        raise ExportError(f"{path}: its model config is not valid ({err}); {fix}") from None


def config_json(config: ModelConfig, input_shape: Sequence[int] | None = None) -> str:
    """The JSON every export stores: the ModelConfig at the exported input size."""
    shape = list(input_shape or config.input_shape)
    return json.dumps(config.to_dict() | {"input_shape": [int(s) for s in shape]})


def side_file(path: str | Path, suffix: str = ".json") -> Path:
    """The file beside an export holding what its format cannot: best.ncnn.param -> best.ncnn.json."""
    path = Path(path)
    return path.with_name(path.name.rsplit(".", 1)[0] + suffix)


def read_side_config(path: str | Path, fix: str) -> ModelConfig:
    """The ModelConfig in the side file of `path` (see side_file)."""
    config_path = side_file(path)
    if not config_path.is_file():
        raise ExportError(f"{path} has no {config_path.name} beside it, so its classes and input size are unknown; "
                          f"{fix}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ExportError(f"{config_path} is too large to be a model config; {fix}")
    return config_from_json(config_path.read_bytes(), config_path, fix)


def check_fixed_shape(path: str | Path, config: ModelConfig, input_shape: Sequence[int] | None) -> None:
    """Exports are fixed to their input size: asking for another is an error that says to re-export."""
    if input_shape is not None and list(input_shape) != list(config.input_shape):
        raise ExportError(f"{path} was exported for input {config.input_shape}; it cannot run at "
                          f"{list(input_shape)} (re-export with --input-shape)")


class RawOutputDetector(BaseDetector):
    """A backend whose file holds only the network: `raw_outputs` gives the head outputs (one float32 [B, A * (5 +
    nc), H / s, W / s] per head, model order), decoded here by the same decode_outputs as the PyTorch Detector."""

    def __init__(self, config: ModelConfig, options: DetectOptions | None = None):
        super().__init__(config, options, config.input_shape)

    def raw_outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """float32 [B, 3, H, W] RGB in [0, 1] -> the head outputs."""
        raise NotImplementedError

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        images = to_model_input(batch, memory_format=torch.contiguous_format).numpy()
        heads = [torch.from_numpy(np.ascontiguousarray(out)) for out in self.raw_outputs(images)]
        return decode_outputs(heads, self.config, self.input_shape)
