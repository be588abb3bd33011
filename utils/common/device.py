"""Device selection and the mixed-precision policy shared by training, evaluation and inference."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import torch

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
    """True when oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=2)
def _conv_and_input(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    """A YOLO-sized 3x3 convolution (64 -> 64 channels, 52x52, batch 4, channels_last) and its input."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream (seeded training) untouched
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(dtype, memory_format=torch.channels_last)
        x = torch.randn(4, 64, 52, 52).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)  # first call: kernel selection and weight reorder
    return conv, x


def _conv_seconds(dtype: torch.dtype) -> float:
    conv, x = _conv_and_input(dtype)
    with torch.no_grad():
        start = time.perf_counter()
        conv(x)
        return time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster(min_speedup: float = 1.15) -> bool:
    """Time one YOLO-sized 3x3 convolution in fp32 and in bf16 on this CPU (about 0.1 s, once per process).

    Native bf16 instructions do not guarantee faster kernels: on some CPUs oneDNN's bf16 convolutions run at half
    the fp32 speed. YOLO_CPU_BF16=1 or 0 skips the measurement and forces the choice.
    """
    forced = os.environ.get("YOLO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if not cpu_supports_bf16():
        return False
    seconds = {dtype: _conv_seconds(dtype) for dtype in (torch.float32, torch.bfloat16)}
    for _ in range(4):  # interleaved rounds, keeping each dtype's fastest: a busy moment must not decide the policy
        for dtype in seconds:
            seconds[dtype] = min(seconds[dtype], _conv_seconds(dtype))
    speedup = seconds[torch.float32] / seconds[torch.bfloat16]
    LOGGER.info("CPU bf16 convolution speed-up %.2fx: %s bf16 autocast", speedup,
                "using" if speedup >= min_speedup else "not using")
    return speedup >= min_speedup


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on `device`, or None for plain fp32.

    CUDA: bf16 where supported (no loss scaling needed), else fp16. CPU: bf16 only where its kernels are measurably
    faster than fp32 (see cpu_bf16_is_faster); emulated or slow bf16 would only cost accuracy.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_is_faster():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """One autocast path for every device: a no-op when disabled or when the device gains nothing from it."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
