"""int8 quantization of exported ONNX models: what is quantized, the metadata, closeness to fp32, and the
predict.py --export onnx --int8 / eval.py --weights *.onnx paths."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch

import predict
from tests.synthetic import make_voc, write_weights
from utils.common.image_io import to_model_input
from utils.deploy.export import export_onnx
from utils.model.config import ModelConfig, build_model
from utils.runtime.onnx import OnnxDetector, read_onnx_config

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements-dev.txt)")
from utils.deploy.quantize import (
    QUANTIZATION_KEY,
    QuantizationError,
    letterboxed,
    nodes_to_quantize,
    output_convs,
    quantize_onnx,
)

SIZE = (96, 128)  # height, width


def make_model(attention: str = "cbam") -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(3)
    config = ModelConfig(classes=["red", "blue"], attention=attention, input_shape=list(SIZE))
    return build_model(config).eval(), config


def scenes(count: int, seed: int = 0) -> list[np.ndarray]:
    """RGB images of coloured rectangles on grey, of varied sizes (so letterboxing pads them)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        image = np.full((h, w, 3), 200, np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            cv2.rectangle(image, (x, y), (x + 20, y + 15), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    model, config = make_model()
    folder = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(model, config, folder / "model.onnx")
    int8 = quantize_onnx(fp32, folder / "model_int8.onnx", letterboxed(scenes(16), SIZE, limit=12))
    return fp32, int8, config


def test_only_the_network_is_quantized_and_the_head_outputs_stay_float(quantized):
    fp32, int8, _ = quantized
    graph = onnx.load(str(fp32)).graph
    chosen = nodes_to_quantize(graph)
    heads = output_convs(graph)
    assert len(heads) == 2 and all("yolo_head" in name for name in heads)
    assert not heads & set(chosen)
    assert all(name.startswith("/model/") for name in chosen)
    assert sum(n.op_type == "Conv" for n in graph.node) == sum(n.endswith("Conv") for n in chosen) + 2
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10


def test_int8_model_keeps_the_config_and_says_how_it_was_made(quantized):
    _, int8, config = quantized
    assert read_onnx_config(int8) == config
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert "int8" in props[QUANTIZATION_KEY] and "12 calibration images" in props[QUANTIZATION_KEY]


def test_int8_outputs_follow_fp32(quantized):
    """Boxes within a few pixels and objectness within a few hundredths of fp32 on unseen images."""
    fp32, int8, _ = quantized
    batch = np.stack(list(letterboxed(scenes(4, seed=1), SIZE, limit=4)))
    reference = OnnxDetector(fp32).forward(batch)
    got = OnnxDetector(int8).forward(batch)
    assert got.shape == reference.shape
    box_error = (got[..., :4] - reference[..., :4]).abs()
    assert float(box_error.median()) < 1.0 and float(box_error.max()) < 0.25 * max(SIZE)
    assert float((got[..., 4] - reference[..., 4]).abs().mean()) < 0.03
    assert not torch.equal(got, reference)  # it really is another model


def test_graphs_not_from_our_exporter_are_refused(tmp_path):
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = onnx.helper.make_graph([conv], "g", [], [])
    with pytest.raises(QuantizationError, match="export it again"):
        nodes_to_quantize(graph)


def test_no_calibration_images_is_an_error(quantized, tmp_path):
    fp32, _, _ = quantized
    with pytest.raises(QuantizationError, match="no calibration images"):
        quantize_onnx(fp32, tmp_path / "empty_int8.onnx", iter([]))
    assert not (tmp_path / "empty_int8.onnx").exists()


def test_model_input_is_planar_float_in_unit_range():
    canvases = np.zeros((2, 4, 6, 3), np.uint8)
    canvases[..., 2] = 255
    canvases[0, 1, 2] = (0, 51, 102)
    x = to_model_input(canvases, memory_format=torch.contiguous_format).numpy()  # the ONNX input
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[1, 2].min() == 1.0 and x[1, :2].max() == 0.0
    assert np.array_equal(x[0, :, 1, 2], np.float32([0, 51, 102]) / np.float32(255))
    batch = torch.from_numpy(canvases).permute(0, 3, 1, 2).contiguous()  # a DataLoader batch, NCHW
    y = to_model_input(batch)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, torch.from_numpy(x))


# ---- scripts ----

def test_predict_exports_int8_that_predict_runs(tmp_path, capsys):
    model, config = make_model("se")
    weights = write_weights(tmp_path / "best.pth", model.state_dict(), config)
    images = tmp_path / "calib"
    images.mkdir()
    for i, image in enumerate(scenes(6)):
        cv2.imwrite(str(images / f"{i}.jpg"), image[..., ::-1])
    args = ["--weights", weights, "--export", "onnx", "--int8", "--source", images, "--calib-images", "4",
            "--save-dir", str(tmp_path), "--name", "export"]
    assert predict.main([str(a) for a in args]) == 0
    int8 = tmp_path / "export" / "best_int8.onnx"
    printed = capsys.readouterr().out
    assert f"exported {tmp_path / 'export' / 'best.onnx'}" in printed and f"exported {int8}" in printed
    assert "4 calibration images" in {p.key: p.value for p in onnx.load(str(int8)).metadata_props}[QUANTIZATION_KEY]
    args = ["--weights", int8, "--source", images, "--save-dir", str(tmp_path), "--name", "run", "--conf", "0.01"]
    assert predict.main([str(a) for a in args]) == 0
    assert "6 image(s):" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message, status", [
    (["--int8"], "add --export onnx", 1),
    (["--int8", "--export", "darknet"], "add --export onnx", 1),
    (["--int8", "--export", "onnx", "--calib-images", "0"], "argument --calib-images: '0' is not an integer >= 1",
     2),  # argparse's range check, before any work
])
def test_bad_int8_options_are_one_clear_error(tmp_path, capsys, argv, message, status):
    model, config = make_model("none")
    weights = write_weights(tmp_path / "w.pth", model.state_dict(), config)
    args = ["--weights", str(weights), "--save-dir", str(tmp_path), "--name", "x", *argv]
    try:
        code = predict.main(args)
    except SystemExit as stop:  # argparse exits by itself
        code = stop.code
    assert code == status
    errors = [line for line in "".join(capsys.readouterr()).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_eval_scores_an_onnx_file_like_its_checkpoint(tmp_path, monkeypatch):
    """eval.py on the fp32 export gives the checkpoint's metrics; on the int8 export it runs and reports."""
    import eval as eval_script
    monkeypatch.setattr("utils.eval.cli.setup_logging", lambda verbose=False: None)
    data = make_voc(tmp_path / "VOCdevkit", images=4, classes=("red", "blue"))
    model, config = make_model("eca")
    with torch.no_grad():  # confident boxes, so there is something to score
        for head in model.head_output_convs():
            head.bias.view(3, 7)[:, 4] = 2.0
    weights = write_weights(tmp_path / "w.pth", model.state_dict(), config)
    fp32 = export_onnx(model, config, tmp_path / "w.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "w_int8.onnx", letterboxed(scenes(8), SIZE, limit=8))

    def evaluate(path, name):
        argv = ["--weights", path, "--data", data, "--save-dir", str(tmp_path), "--name", name, "--workers", "0",
                "--device", "cpu",
                "--no-amp", "--conf", "0.01"]
        assert eval_script.main([str(a) for a in argv]) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())

    from_pth, from_onnx, from_int8 = evaluate(weights, "pth"), evaluate(fp32, "onnx"), evaluate(int8, "int8")
    # onnxruntime and PyTorch differ by ~1e-5, which can move a score across --conf
    assert from_onnx["detections"] == pytest.approx(from_pth["detections"], rel=0.01) and from_pth["detections"] > 0
    assert from_onnx["mAP50"] == pytest.approx(from_pth["mAP50"], abs=1e-3)
    assert from_int8["detections"] > 0 and 0 <= from_int8["mAP50"] <= 1 and from_int8["weights"] == str(int8)
