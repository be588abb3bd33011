"""Device selection and the autocast policy."""
from __future__ import annotations

import pytest
import torch

from utils import device as device_utils


def test_select_device_defaults_and_errors():
    assert device_utils.select_device("cpu") == torch.device("cpu")
    assert device_utils.select_device(None).type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            device_utils.select_device("cuda:1")


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


def test_measured_choice_is_a_bool_and_leaves_the_random_stream_alone(monkeypatch):
    monkeypatch.delenv("YOLO_CPU_BF16", raising=False)
    device_utils.cpu_bf16_is_faster.cache_clear()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    try:
        assert isinstance(device_utils.cpu_bf16_is_faster(), bool)
    finally:  # a measurement taken under the suite's load must not choose the precision of later tests
        device_utils.cpu_bf16_is_faster.cache_clear()
    assert torch.equal(torch.rand(3), expected)
    assert device_utils.autocast(torch.device("cpu"), enabled=False).__class__.__name__ == "nullcontext"
