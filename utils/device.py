"""Device selection and the mixed-precision policy shared by training, evaluation and inference."""
from __future__ import annotations

import contextlib
import logging

import torch

LOGGER = logging.getLogger(__name__)


def select_device(name: str | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or None/'' for the best available. A CUDA request without CUDA is a clear error."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on `device`, or None for plain fp32.

    CUDA: bf16 where supported (no loss scaling needed), else fp16. CPU: bf16 only with native support,
    since emulated bf16 is slower than fp32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """One autocast path for every device: a no-op when disabled or when the device gains nothing from it."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
