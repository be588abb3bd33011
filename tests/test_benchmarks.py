"""Smoke runs of the benchmark scripts at toy sizes, so that they keep working (their figures are not checked)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from benchmarks import bench_infer, bench_train, bench_val
from tests.synthetic import make_voc, write_weights
from utils.model.config import ModelConfig, build_model


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_bench_infer_runs_every_variant_and_reports_speedups(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnxruntime variants need onnxruntime (requirements-dev.txt)")
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8))
    argv = ["--images", str(tmp_path), "--limit", "4", "--rounds", "1", "--batch-sizes", "1", "2", "--size", "64",
            "--variants", "baseline", "fused_fp32", "onnxruntime", "onnxruntime_int8"]
    assert bench_infer.main(argv) == 0
    lines = json_lines(capsys.readouterr().out)
    measured = {(line["variant"], line["batch"]) for line in lines if line["bench"] == "infer"}
    assert measured == {(v, b) for v in ("baseline", "fused_fp32", "onnxruntime", "onnxruntime_int8") for b in (1, 2)}
    assert all(line["images_per_s"] > 0 for line in lines if line["bench"] == "infer")
    speedups = next(line for line in lines if line["bench"] == "infer_speedup_vs_baseline_b1")
    assert speedups["baseline_b1"] == 1.0 and "onnxruntime_int8_b2" in speedups


def test_bench_infer_compares_map_of_variants(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnxruntime variants need onnxruntime (requirements-dev.txt)")
    data = make_voc(tmp_path / "VOCdevkit", images=4)
    config = ModelConfig(classes=["red", "blue"], attention="cbam", input_shape=[64, 64])
    weights = write_weights(tmp_path / "w.pth", build_model(config).state_dict(), config)
    argv = ["--images", str(tmp_path / "absent"), "--weights", str(weights), "--data", str(data), "--size", "64",
            "--variants", "baseline", "onnxruntime", "onnxruntime_int8"]
    assert bench_infer.main(argv) == 0
    maps = {line["variant"]: line for line in json_lines(capsys.readouterr().out) if line["bench"] == "infer_map"}
    assert set(maps) == {"baseline", "onnxruntime", "onnxruntime_int8"}
    assert maps["baseline"]["delta_vs_baseline_points"] == 0.0 and maps["onnxruntime"]["images"] == 4
    with pytest.raises(ValueError, match="calibrate on another"):
        bench_infer.main(argv + ["--calib-split", "test"])


def test_bench_train_breakdown_accounts_for_the_step(monkeypatch):
    config = ModelConfig(classes=["a"], attention="eca", input_shape=[64, 64])
    monkeypatch.setattr(bench_train, "CONV_CASES", bench_train.CONV_CASES[:1])  # one dtype checks the plumbing
    result = bench_train.breakdown(config, torch.device("cpu"), batch=2, steps=1)
    assert 0 < result["convolution_share"] < 1
    assert result["convolutions_only_ceiling_images_per_s"] > result["model_only_images_per_s"] > 0
    assert result["conv3x3_fp32_fwd_gflops"] > 0


def test_bench_val_reports_the_validation_share_of_each_epoch(tmp_path, capsys):
    data = make_voc(tmp_path / "VOCdevkit", images=4)
    argv = ["--data", str(data), "--input-shape", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--phi", "none"]
    assert bench_val.main(argv) == 0
    (line,) = [line for line in json_lines(capsys.readouterr().out) if line["bench"] == "validation_cost"]
    assert line["val_images"] == 4 and line["train_s"] > 0 and line["val_s"] > 0
    assert 0 < line["val_share_of_epoch"] < 1
