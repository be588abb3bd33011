"""Device selection and the autocast policy."""
from __future__ import annotations

import pytest
import torch

from utils.common import device as device_utils
from utils.common.errors import ConfigError


def test_select_device_picks_the_best_available_and_keeps_explicit_choices():
    best = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert device_utils.select_device(None) == device_utils.select_device("") == best
    assert device_utils.select_device("cpu") == torch.device("cpu")


def test_select_device_refuses_what_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_utils.select_device(None) == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"--device {name}: CUDA is not available.*--device cpu"):
            device_utils.select_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_utils.select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="--device cuda:1: only 1 CUDA device"):
        device_utils.select_device("cuda:1")
    with pytest.raises(ConfigError, match="'gpu' is not a device; use cpu, cuda or cuda:N"):
        device_utils.select_device("gpu")


@pytest.mark.parametrize("forced,expected", [("1", torch.bfloat16), ("0", None)])
def test_cpu_bf16_choice_can_be_forced(monkeypatch, forced, expected):
    monkeypatch.setenv("YOLO_CPU_BF16", forced)
    device_utils.cpu_bf16_is_faster.cache_clear()
    try:
        assert device_utils.autocast_dtype(torch.device("cpu")) == expected
        context = device_utils.autocast(torch.device("cpu"))
        with context:
            y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
        assert y.dtype == (expected or torch.float32)
    finally:
        device_utils.cpu_bf16_is_faster.cache_clear()


@pytest.mark.parametrize("native,timings,expected", [
    (False, {}, False),  # no native bf16: nothing is timed
    (True, {torch.float32: [0.010], torch.bfloat16: [0.005]}, True),  # 2x faster
    (True, {torch.float32: [0.010], torch.bfloat16: [0.009]}, False),  # 1.11x: below the 1.15x bar
    (True, {torch.float32: [0.010], torch.bfloat16: [0.050, 0.006]}, True),  # one slow (busy) round does not decide
])
def test_bf16_is_used_only_where_it_measures_faster(monkeypatch, native, timings, expected):
    monkeypatch.delenv("YOLO_CPU_BF16", raising=False)
    monkeypatch.setattr(device_utils, "cpu_supports_bf16", lambda: native)
    calls = {dtype: 0 for dtype in timings}

    def fake_seconds(dtype: torch.dtype) -> float:
        if not timings:
            raise AssertionError("timed a convolution on a CPU without native bf16")
        values, calls[dtype] = timings[dtype], calls[dtype] + 1
        return values[min(calls[dtype] - 1, len(values) - 1)]

    monkeypatch.setattr(device_utils, "_conv_seconds", fake_seconds)
    device_utils.cpu_bf16_is_faster.cache_clear()
    try:
        assert device_utils.cpu_bf16_is_faster() is expected
        assert device_utils.autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if expected else None)
    finally:
        device_utils.cpu_bf16_is_faster.cache_clear()
    assert all(count == 5 for count in calls.values())  # five interleaved rounds per dtype


def test_the_real_measurement_leaves_the_random_stream_alone(monkeypatch):
    monkeypatch.delenv("YOLO_CPU_BF16", raising=False)
    device_utils.cpu_bf16_is_faster.cache_clear()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    try:
        device_utils.cpu_bf16_is_faster()
    finally:  # a measurement taken under the suite's load must not choose the precision of later tests
        device_utils.cpu_bf16_is_faster.cache_clear()
    assert torch.equal(torch.rand(3), expected)
    assert device_utils.autocast(torch.device("cpu"), enabled=False).__class__.__name__ == "nullcontext"
