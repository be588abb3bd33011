"""Checkpoints people keep: best.pth is a weights checkpoint (the EMA weights, both configs, its epoch's metrics; no
optimizer) at about a third of last.pth, which stays resumable; every consumer of best.pth still works (eval.py,
predict.py and its ONNX export, train.py --weights), and --resume of best.pth says to use last.pth."""
from __future__ import annotations

import json

import pytest
import torch

from tests.synthetic import make_voc
from utils.model.checkpoint import (
    CheckpointError,
    is_training_checkpoint,
    load_checkpoint,
    load_model,
    read_training_checkpoint,
)
from utils.train import TrainConfig, train

NO_AUGMENT = {"mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "flip": 0.0, "jitter": 0.0,
              "scale": (1.0, 1.0), "translate": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on 4 synthetic images (validated, so best.pth is that epoch)."""
    root = tmp_path_factory.mktemp("kinds")
    data = make_voc(root / "data", images=4)
    config = TrainConfig(data=str(data), phi="se", input_shape=[64, 64], epochs=1, batch_size=2, workers=0,
                         save_dir=str(root / "logs"), preview=False, augment=dict(NO_AUGMENT), warmup_epochs=1)
    return data, train(config)


def test_best_pth_keeps_what_use_and_fine_tuning_need(trained):
    _, run_dir = trained
    best, last = load_checkpoint(run_dir / "best.pth"), load_checkpoint(run_dir / "last.pth")
    assert is_training_checkpoint(last) and not is_training_checkpoint(best)
    assert not {"optimizer", "ema", "scaler"} & set(best), sorted(best)
    assert {"model", "config", "train_config", "precision", "epoch", "metrics"} <= set(best)
    assert best["config"] == last["config"] and best["train_config"] == last["train_config"]
    for key, value in last["ema"].items():  # the shipped weights are the EMA's
        assert torch.equal(best["model"][key], value), key
    assert best["metrics"]["epoch"] == 1 and best["metrics"]["val/mAP50"] == last["history"][0]["val/mAP50"]
    assert "conf" in best["metrics"]["best_f1"]
    sizes = {name: (run_dir / name).stat().st_size for name in ("best.pth", "last.pth")}
    assert sizes["best.pth"] < 0.4 * sizes["last.pth"], sizes  # one copy of the weights instead of three
    model, config = load_model(run_dir / "best.pth")
    assert config.attention == "se" and config.classes == ["blue", "red"]


def test_resume_from_best_pth_says_to_use_last_pth(trained, capfd):
    from utils.train.cli import main
    _, run_dir = trained
    with pytest.raises(CheckpointError, match="last.pth"):
        read_training_checkpoint(run_dir / "best.pth")
    assert main(["--resume", str(run_dir / "best.pth")]) == 1
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume " + str(run_dir) in errors[0], errors
    assert not (run_dir / ".train.lock").exists()


@pytest.mark.slow
def test_every_consumer_of_best_pth_works(trained, tmp_path, capfd):
    from utils.deploy.cli import main as predict
    from utils.eval.cli import main as evaluate
    data, run_dir = trained
    best = str(run_dir / "best.pth")
    # eval.py: the same numbers as the validation that chose this best.pth (same split, code path, weights)
    assert evaluate(["--weights", best, "--data", str(data), "--split", "val", "--device", "cpu", "--workers", "0",
                     "--save-dir", str(tmp_path), "--name", "eval"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["mAP50"] == pytest.approx(load_checkpoint(best)["metrics"]["val/mAP50"], abs=1e-9)
    # predict.py on images, and its ONNX export (checked against PyTorch inside export_onnx)
    images = str(data / "VOC2007" / "JPEGImages")
    assert predict(["--weights", best, "--source", images, "--device", "cpu", "--save-dir", str(tmp_path),
                    "--name", "predict"]) == 0
    assert predict(["--weights", best, "--export", "onnx", "--save-dir", str(tmp_path), "--name", "export"]) == 0
    assert (tmp_path / "export" / "best.onnx").is_file()
    # train.py --weights: fine-tuning from it loads every tensor
    tuned = train(TrainConfig(data=str(data), phi="se", input_shape=[64, 64], epochs=1, batch_size=2, workers=0,
                              save_dir=str(tmp_path / "tuned"), preview=False, augment=dict(NO_AUGMENT), weights=best))
    log = (tuned / "train.log").read_text(encoding="utf-8")
    assert "initial weights" in log and ", skipped 0" in log, log
    assert "Traceback" not in capfd.readouterr().err
