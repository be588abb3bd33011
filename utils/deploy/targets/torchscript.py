"""TorchScript: torch.jit.trace of the fused model with decoding inside (Conv+BN folded, channels_last), frozen,
the ModelConfig in the archive's extra file model_config.json; runs wherever libtorch does (C++, mobile)."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.deploy.export import DecodedModel
from utils.deploy.targets.base import ExportRequest, ExportTarget, check_against_pytorch, remove_partial, traced
from utils.runtime.detector import fuse_conv_bn
from utils.runtime.exported import config_json
from utils.runtime.torchscript import EXTRA_FILE


def export(request: ExportRequest) -> list[Path]:
    path = request.stem.with_name(f"{request.stem.name}.torchscript")
    path.parent.mkdir(parents=True, exist_ok=True)
    fused = fuse_conv_bn(request.model).to(memory_format=torch.channels_last)
    module = torch.jit.freeze(traced(DecodedModel(fused, request.config, request.config.input_shape),
                                     request.config, channels_last=True))
    try:
        torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: config_json(request.config)})
        if request.check:
            check_against_pytorch(path, request.model, request.config)
    except BaseException:
        remove_partial(path)
        raise
    return [path]


TARGET = ExportTarget(export, "TorchScript (fused, traced, frozen), run by PyTorch / libtorch")
