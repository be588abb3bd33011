"""Device selection and the precision policy (--precision) shared by training, evaluation and inference."""
from __future__ import annotations

import contextlib
import logging

import torch

from utils.common.cli import PRECISIONS
from utils.common.errors import ConfigError

LOGGER = logging.getLogger(__name__)


def select_device(name: str | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or None/'' for the best available. A CUDA request without CUDA is a clear error."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own message lists its dozen device types
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX). Informative only (benchmarks):
    whether bf16 is used is the command's choice (--precision), never this."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# --precision: 'auto' is a fixed rule of the device, never a timing (a score must not depend on how busy the machine
# was when a command started): CUDA autocasts to bf16 where the GPU supports it, else fp16 (with loss scaling when
# training); every other device runs fp32. bf16/fp16 on a CPU are honoured when asked for explicitly. PRECISIONS (the
# choices of --precision) is defined next to the flag, in utils.common.cli, which --help reads without torch.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(device: torch.device | str, requested: str = "auto") -> str:
    """The precision a command runs in on `device`: 'fp32', 'bf16' or 'fp16' (see PRECISIONS)."""
    device = torch.device(device)
    choice = str(requested).strip().lower()
    if choice not in PRECISIONS:
        raise ConfigError(f"--precision {requested!r} is not a precision; use one of {', '.join(PRECISIONS)}")
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")
    return choice


def precision_note(device: torch.device, requested: str, precision: str) -> str:
    """One line for the log: what runs, and why."""
    how = f"--precision {requested}" if requested != "auto" else f"auto on {device.type}"
    hint = "; --precision bf16 asks for bf16 autocast" if requested == "auto" and device.type == "cpu" else ""
    return f"precision: {precision} ({how}{hint})"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision ('fp32' -> None)."""
    return AUTOCAST_DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """One autocast path for every device: a no-op for 'fp32', torch.autocast for 'bf16' / 'fp16'. `precision` is a
    resolved one (resolve_precision), so the same command always computes in the same precision."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
