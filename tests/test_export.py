"""ONNX export: decoded outputs equal PyTorch's (onnxruntime), dynamic batch, config in the metadata, and
predict.py running the .onnx file; predict.py --export onnx/darknet."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import predict
from tests.synthetic import write_weights
from utils.deploy.export import export_onnx
from utils.model.config import ModelConfig, build_model
from utils.model.decode import decode_outputs
from utils.runtime.detector import DetectOptions, Detector
from utils.runtime.onnx import ExportError, OnnxDetector, read_onnx_config

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements-dev.txt)")
SIZE = (128, 160)  # height, width: rectangular, to catch a swapped axis


def make_model(attention: str = "cbam") -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(1)
    config = ModelConfig(classes=["a", "b"], attention=attention, input_shape=list(SIZE))
    model = build_model(config).eval()
    with torch.no_grad():  # confident anchor-0 'a' boxes so NMS has something to keep
        for head in model.head_output_convs():
            head.bias.view(3, 7)[0, 4] = 4.0
    return model, config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, config = make_model()
    path = export_onnx(model, config, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return path, model, config


def test_onnx_matches_pytorch_for_any_batch_size(exported):
    path, model, config = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, *SIZE)
    with torch.no_grad():
        expected = decode_outputs(model(images), config).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    assert got.shape == expected.shape == (3, 3 * (4 * 5 + 8 * 10) * 1, 5 + 2)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_onnx_metadata_holds_the_config(exported):
    path, _, config = exported
    assert read_onnx_config(path) == config
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["opset"] == "17"
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_onnx_detector_equals_pytorch_detector(exported):
    path, model, config = exported
    rng = np.random.default_rng(0)
    # the input's aspect ratio, so no grey padding: identical padding cells tie in score and may swap places
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(96, 120), (256, 320)]]
    options = DetectOptions(0.3, 0.3, 50)
    ours = OnnxDetector(path, options)(images)
    theirs = Detector(model, config, "cpu", options, precision="fp32")(images)
    assert sum(len(d) for d in theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        # same set of rows (order may differ where scores tie to 1e-6): each row has a twin in the other
        gap = (np.abs(a[:, None] - b[None]) / np.maximum(1, np.abs(b[None]))).max(axis=2)
        assert gap.min(axis=1).max() < 1e-3 and gap.min(axis=0).max() < 1e-3


def test_onnx_detector_refuses_another_input_size(exported):
    with pytest.raises(ExportError, match="exported for input"):
        OnnxDetector(exported[0], input_shape=[160, 160])


def test_export_check_catches_a_wrong_graph(tmp_path):
    model, config = make_model("none")
    path = export_onnx(model, config, tmp_path / "m.onnx", check=False)
    other, _ = make_model("none")
    with torch.no_grad():
        other.yolo_headP5[1].bias.add_(1.0)  # PyTorch side differs from the file
    from utils.deploy.export import DecodedModel, check_onnx
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        check_onnx(path, DecodedModel(other, config, SIZE), SIZE)


def test_predict_exports_and_runs_onnx(tmp_path, capsys):
    model, config = make_model("eca")
    weights = write_weights(tmp_path / "best.pth", model.state_dict(), config)
    args = ["--weights", str(weights), "--export", "onnx", "--save-dir", str(tmp_path), "--name", "export"]
    assert predict.main(args) == 0
    onnx_path = tmp_path / "export" / "best.onnx"
    assert f"exported {onnx_path}" in capsys.readouterr().out
    image = tmp_path / "in.png"
    import cv2
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    args = ["--weights", str(onnx_path), "--source", str(image), "--save-dir", str(tmp_path), "--name", "run",
            "--conf", "0.3"]
    assert predict.main(args) == 0
    assert (tmp_path / "run" / "in.png").is_file()
    assert "1 image(s):" in capsys.readouterr().out


def test_predict_exports_darknet(tmp_path, capsys):
    model, config = make_model("none")
    weights = write_weights(tmp_path / "plain.pth", model.state_dict(), config)
    args = ["--weights", str(weights), "--export", "darknet", "--save-dir", str(tmp_path), "--name", "dk"]
    assert predict.main(args) == 0
    assert (tmp_path / "dk" / "plain.cfg").is_file() and (tmp_path / "dk" / "plain.weights").is_file()
    assert "exported" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"not a model", b"\x08\x07\x12\x05"])
def test_broken_onnx_file_is_one_clear_error(tmp_path, capsys, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    image = tmp_path / "in.png"
    import cv2
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    args = ["--weights", str(path), "--source", str(image), "--save-dir", str(tmp_path), "--name", "run"]
    assert predict.main(args) == 1
    printed = "".join(capsys.readouterr())
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.onnx" in errors[0] and "export" in errors[0]
    assert "Traceback" not in printed
