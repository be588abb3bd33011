"""Run a TorchScript export (.torchscript: the fused model traced with decoding inside) behind the Detector interface.

The ModelConfig is the archive's extra file `model_config.json`. torch.jit.load runs no pickled Python: a TorchScript
archive holds tensors and TorchScript code, which can call only TorchScript operators.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.common.image_io import to_model_input
from utils.runtime.detector import BaseDetector, DetectOptions
from utils.runtime.exported import CONFIG_KEY, ExportError, check_fixed_shape, config_from_json

EXTRA_FILE = f"{CONFIG_KEY}.json"
FIX = "export it again with predict.py --export torchscript"


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, str]:
    """(the module on the CPU, its config JSON), or an ExportError naming the file."""
    path = Path(path)
    extra = {EXTRA_FILE: ""}
    if not zipfile.is_zipfile(path):  # checked first: torch.jit.load's own message on a broken file is a C++ trace
        raise ExportError(f"{path} is not a TorchScript archive (not a zip file; truncated?); {FIX}")
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path} is not a readable TorchScript archive ({reason}); {FIX}") from None
    if not extra[EXTRA_FILE]:
        raise ExportError(f"{path} has no {EXTRA_FILE}, so its classes and input size are unknown; {FIX}")
    return module.eval(), extra[EXTRA_FILE]


class TorchScriptDetector(BaseDetector):
    """The Detector interface over a .torchscript file, run by PyTorch on the CPU in fp32."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None):
        self.module, text = load_torchscript(path)
        config = config_from_json(text, path, FIX)
        check_fixed_shape(path, config, input_shape)
        super().__init__(config, options, config.input_shape)

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> torch.Tensor:
        return self.module(to_model_input(batch, memory_format=torch.channels_last)).float()
