"""utils.runtime.loader.load_runnable: every weights format predict.py and eval.py take, through one function."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.synthetic import write_weights
from utils.deploy.export import export_onnx
from utils.model import checkpoint as checkpoint_module
from utils.model.checkpoint import CheckpointError
from utils.model.config import ModelConfig, build_model
from utils.runtime.detector import Detector
from utils.runtime.loader import load_runnable
from utils.runtime.onnx import ExportError, OnnxDetector

CONFIG = ModelConfig(classes=["a", "b"], attention="se", input_shape=[64, 96])


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return build_model(CONFIG).state_dict()


def test_a_checkpoint_is_read_once_and_rebuilds_its_model(tmp_path, state, monkeypatch):
    path = write_weights(tmp_path / "best.pth", state, CONFIG)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(checkpoint_module.torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    loaded = load_runnable(path, device="cpu")
    assert len(reads) == 1
    assert loaded.config == CONFIG and loaded.onnx is None and loaded.runnable is loaded.model
    assert not loaded.model.training and loaded.device == torch.device("cpu")
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    assert isinstance(loaded.detector(precision="fp32"), Detector)


def test_bare_state_dicts_need_names_and_take_phi_and_input_shape(tmp_path, state):
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="--names FILE"):
        load_runnable(path)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n", encoding="utf-8")
    loaded = load_runnable(path, names=names, phi="se", input_shape="128,160")
    assert loaded.config.classes == ["a", "b"] and loaded.config.attention == "se"
    assert loaded.config.input_shape == [128, 160]
    assert load_runnable(path, names=["a", "b"], phi=1, input_shape=[128, 160]).config == loaded.config


def test_onnx_files_run_on_the_cpu_and_ignore_device_with_a_warning(tmp_path, state, caplog):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements-dev.txt)")
    model = build_model(CONFIG)
    model.load_state_dict(state)
    path = export_onnx(model.eval(), CONFIG, tmp_path / "model.onnx", check=False)
    with caplog.at_level(logging.WARNING):
        loaded = load_runnable(path, device="cuda:3")
    assert "--device cuda:3 ignored" in caplog.text
    assert isinstance(loaded.onnx, OnnxDetector) and loaded.model is None and loaded.runnable is loaded.onnx
    assert loaded.device == torch.device("cpu") and loaded.config == CONFIG and loaded.detector() is loaded.onnx
    with pytest.raises(ExportError, match="exported for input"):
        load_runnable(path, input_shape=128)
