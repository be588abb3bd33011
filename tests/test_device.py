"""Device selection and the precision policy."""
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


def test_auto_precision_is_a_rule_of_the_device_never_a_timing(monkeypatch):
    """The same command gives the same precision on a quiet and on a loaded machine: nothing is timed."""
    import time

    def no_timing():
        raise AssertionError("the precision policy timed something")

    monkeypatch.setattr(time, "perf_counter", no_timing)
    monkeypatch.setattr(time, "time", no_timing)
    monkeypatch.setattr(device_utils, "cpu_supports_bf16", lambda: True)  # even where bf16 is native
    assert device_utils.resolve_precision("cpu") == device_utils.resolve_precision("cpu", "auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_utils.resolve_precision(torch.device("cuda", 0)) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert device_utils.resolve_precision(torch.device("cuda", 0)) == "fp16"


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_an_explicit_precision_is_honoured_on_the_cpu(precision, dtype):
    resolved = device_utils.resolve_precision("cpu", precision)
    assert resolved == precision
    with device_utils.autocast("cpu", resolved):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == dtype


def test_unknown_or_contradicting_precisions_are_one_clear_error():
    from utils.common.cli import requested_precision

    with pytest.raises(ConfigError, match="--precision 'half' is not a precision; use one of auto, fp32, bf16"):
        device_utils.resolve_precision("cpu", "half")
    assert requested_precision("auto", True, "--no-amp") == "fp32"
    assert requested_precision("bf16", False, "--no-amp") == "bf16"
    with pytest.raises(ConfigError, match="--no-amp asks for fp32 but --precision asks for bf16"):
        requested_precision("bf16", True, "--no-amp")
