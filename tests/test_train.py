"""Training: overfitting a few images, exact resume, DDP on gloo, the non-finite-loss guard, atomic checkpoints."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.paths import ROOT
from tests.synthetic import make_voc
from utils.model.checkpoint import load_checkpoint, save_checkpoint
from utils.train import cli
from utils.train import trainer as engine
from utils.train.config import FITNESS, TrainConfig
from utils.train.loss import YoloLoss
from utils.train.trainer import NonFiniteLossError, Trainer, train

NO_AUGMENT = {"mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "flip": 0.0, "jitter": 0.0,
              "scale": (1.0, 1.0), "translate": False}


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data"), images=4)


def tiny_config(data, save_dir, **overrides) -> TrainConfig:
    values = dict(data=str(data), phi="cbam", input_shape=[64, 64], epochs=2, batch_size=2, workers=0,
                  save_dir=str(save_dir), eval_period=1, preview=False, augment=dict(NO_AUGMENT), warmup_epochs=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
def test_overfits_a_few_images(tiny_voc, tmp_path):
    """From scratch on 4 images at 128 px: the loss falls and val mAP50 on those images reaches 0.9."""
    config = tiny_config(tiny_voc, tmp_path, input_shape=[128, 128], epochs=50, optimizer="adam", lr=1e-2,
                         eval_period=10, ema=False, warmup_epochs=2)
    state = Trainer(config).fit()
    history = state.history
    assert history[-1]["train/total"] < 0.5 * history[0]["train/total"]
    assert history[-1]["val/mAP50"] >= 0.9, history[-1]


def test_resume_restores_epoch_lr_optimizer_and_ema(tiny_voc, tmp_path):
    run_dir = train(tiny_config(tiny_voc, tmp_path, epochs=2))
    saved = load_checkpoint(run_dir / "last.pth")
    assert saved["epoch"] == 2 and [row["epoch"] for row in saved["history"]] == [1, 2]
    resumed = Trainer(engine.TrainConfig.from_dict(saved["train_config"]), resume=saved, run_dir=run_dir)
    assert resumed.state.epoch == 2
    restored = resumed.optimizer.state_dict()
    assert saved["optimizer"]["state"]  # AdamW's step count and two moments per parameter (SGD: its momentum)
    for key, value in saved["optimizer"]["state"].items():
        assert restored["state"][key].keys() == value.keys()
        assert all(torch.equal(restored["state"][key][name], tensor) for name, tensor in value.items())
    for key, value in saved["ema"].items():
        assert torch.equal(resumed.ema.module.state_dict()[key], value)
    assert int(resumed.ema.n_averaged) == saved["ema_updates"] > 0
    # the LR schedule is not saved: it is rebuilt from the training config, so it continues exactly
    assert "scheduler" not in saved and resumed.schedule == engine.LRSchedule(2, 1, min_ratio=0.01, kind="cos")
    # resume to 3 epochs: only epoch 3 is trained, and the results keep one row per epoch
    train(tiny_config(tiny_voc, tmp_path), resume=str(run_dir), overrides={"epochs": 3})
    final = load_checkpoint(run_dir / "last.pth")
    assert final["epoch"] == 3 and [row["epoch"] for row in final["history"]] == [1, 2, 3]
    assert (run_dir / "results.csv").read_text().count("\n") == 4  # header + 3 epochs


def nan_on_calls(bad_calls: set[int] | None):
    """A YoloLoss.forward that returns a NaN total on the chosen calls (all when None): a numerically broken batch."""
    original, calls = YoloLoss.forward, [0]

    def forward(module, outputs, targets):
        losses = original(module, outputs, targets)
        calls[0] += 1
        if bad_calls is None or calls[0] in bad_calls:
            losses = {**losses, "total": losses["total"] * float("nan")}
        return losses
    return forward


def test_non_finite_loss_is_skipped_and_state_stays_finite(tiny_voc, tmp_path, monkeypatch):
    monkeypatch.setattr(YoloLoss, "forward", nan_on_calls({2, 3}))
    trainer = Trainer(tiny_config(tiny_voc, tmp_path, epochs=2, eval_period=0))
    state = trainer.fit()
    assert sum(row["skipped_steps"] for row in state.history) == 2
    assert state.epoch == 2
    for tensor in list(trainer.model.state_dict().values()) + list(trainer.ema.module.state_dict().values()):
        assert torch.isfinite(tensor.float()).all()
    assert trainer.optimizer.state  # AdamW's moments (SGD's momentum)
    for value in trainer.optimizer.state.values():
        assert all(torch.isfinite(tensor).all() for tensor in value.values() if torch.is_tensor(tensor))


def test_many_non_finite_losses_stop_training_clearly(tiny_voc, tmp_path, monkeypatch):
    monkeypatch.setattr(YoloLoss, "forward", nan_on_calls(None))
    trainer = Trainer(tiny_config(tiny_voc, tmp_path, epochs=3, max_bad_steps=3, eval_period=0))
    with pytest.raises(NonFiniteLossError, match="consecutive non-finite losses"):
        trainer.fit()


def test_interrupted_checkpoint_write_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tiny_voc, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "train.py", "--data", str(tiny_voc), "--input-shape", "64", "--epochs", "2",
               "--batch-size", "4", "--workers", "0", "--device", "cpu", "--save-dir", str(tmp_path), "--name", "ddp",
               "--eval-period", "1", "--no-preview", "--sync-bn", "--mosaic", "0", "--mixup", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dirs = list(tmp_path.iterdir())
    assert [d.name for d in run_dirs] == ["ddp"]  # one folder: only rank 0 writes
    checkpoint = load_checkpoint(run_dirs[0] / "last.pth")
    assert checkpoint["epoch"] == 2 and "val/mAP50" in checkpoint["history"][-1]


def scripted_fitness(monkeypatch, values: list[float]):
    """Validation runs for real, but reports mAP50 values[k] at its k-th call: with --fitness map50 the fitness follows
    a known script.
    Patched where the engine calls it (utils.train.trainer imports evaluate at module level)."""
    real, calls = engine.evaluate, []

    def evaluate(*args, **kwargs):
        metrics = real(*args, **kwargs)
        metrics["mAP50"] = values[len(calls)]
        calls.append(metrics["mAP50"])
        return metrics
    monkeypatch.setattr(engine, "evaluate", evaluate)
    return calls


def test_patience_stops_at_the_expected_epoch_and_resume_says_so(tiny_voc, tmp_path, monkeypatch, caplog):
    # best at epoch 2, then 2 validations without improvement: --patience 2 stops after epoch 4 of 8
    caplog.set_level(logging.INFO)
    calls = scripted_fitness(monkeypatch, [0.1, 0.3, 0.3, 0.2, 0.25, 0.29, 0.28, 0.9])
    run_dir = train(tiny_config(tiny_voc, tmp_path, epochs=8, patience=2, fitness="map50"))
    last, best = load_checkpoint(run_dir / "last.pth"), load_checkpoint(run_dir / "best.pth")
    assert len(calls) == 4 and last["epoch"] == 4 and best["epoch"] == 2
    assert last["stop_reason"] and "--patience 2" in last["stop_reason"] and last["best_epoch"] == 2
    assert [row["epoch"] for row in last["history"]] == [1, 2, 3, 4]
    assert (run_dir / "results.csv").read_text().count("\n") == 5  # header + epochs 1-4: it ends at the last epoch run
    assert [row["fitness"] for row in last["history"]] == [0.1, 0.3, 0.3, 0.2]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1].startswith("stopped early after epoch 4 of 8") and "best.pth = epoch 2" in messages[-1]
    assert {"model", "ema", "optimizer", "config", "train_config"} <= set(last)  # resumable
    assert {"model", "config", "train_config", "metrics"} <= set(best) and "optimizer" not in best  # kept to use
    assert best["metrics"]["epoch"] == 2 and best["metrics"]["fitness"] == 0.3
    # resume: already stopped, nothing trained
    caplog.clear()
    train(tiny_config(tiny_voc, tmp_path), resume=str(run_dir))
    assert "already stopped early after epoch 4" in caplog.text and len(calls) == 4
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 4
    # resume with a larger --patience: trains on until 4 validations in a row bring nothing (epochs 5 and 6)
    train(tiny_config(tiny_voc, tmp_path), resume=str(run_dir), overrides={"patience": 4})
    final = load_checkpoint(run_dir / "last.pth")
    assert len(calls) == 6 and final["epoch"] == 6 and "--patience 4" in final["stop_reason"]
    assert [row["epoch"] for row in final["history"]] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run_dir / "best.pth")["epoch"] == 2


def test_default_fitness_weighs_box_quality():
    """mAP50 saturates (1.0 on an easy val split long before training ends) while mAP50-95 still climbs; the default
    fitness, 0.1 mAP50 + 0.9 mAP50-95, keeps following the better boxes."""
    assert TrainConfig().fitness == "mix"
    assert cli.config_from_args(cli.get_args_parser().parse_args([])).fitness == "mix"
    assert FITNESS["mix"]({"mAP50": 1.0, "mAP50_95": 0.74}) > FITNESS["mix"]({"mAP50": 1.0, "mAP50_95": 0.55})


@pytest.mark.parametrize("name, expected", [("map50", 0.5), ("map50_95", 0.3), ("mix", 0.32)])
def test_fitness_choices(name, expected):
    assert engine.FITNESS[name]({"mAP50": 0.5, "mAP50_95": 0.3}) == pytest.approx(expected)
    assert engine.FITNESS[name]({"mAP50": None, "mAP50_95": None}) is None


def test_validation_logs_loss_precision_recall_and_pictures(tiny_voc, tmp_path):
    run_dir = train(tiny_config(tiny_voc, tmp_path, epochs=1, preview=True, fitness="mix"))
    header = (run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"val/box", "val/obj", "val/cls", "val/precision", "val/recall", "val/mAP50", "val/mAP50_95",
            "fitness"} <= set(header)
    for name in ("results.png", "confusion_matrix.png", "f1_curve.png", "labels.png", "train_batch_preview.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG", name
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"val/box", "val/precision", "val/recall", "val/mAP50_95"} <= set(events.Tags()["scalars"])
    assert {"val/confusion_matrix", "val/f1_curve", "train/labels"} <= set(events.Tags()["images"])
