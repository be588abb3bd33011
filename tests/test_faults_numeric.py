"""Numeric faults: batches whose loss is not finite are skipped, training goes on, and the weights, BatchNorm buffers,
EMA and optimiser state stay finite; many in a row stop training with NonFiniteLossError and leave last.pth intact.

Faults are injected in-process into a real Trainer: (a) the loss itself returns NaN / inf for chosen steps (e.g. a bad
target), (b) the forward pass sees a NaN input for chosen steps (an overflow inside the network), which also reaches
the BatchNorm running statistics before the loss can be checked.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.fault_helpers import tiny_voc
from utils.model.checkpoint import load_checkpoint
from utils.train.config import TrainConfig
from utils.train.trainer import NonFiniteLossError, Trainer


def _trainer(tmp_path, epochs: int = 2, **overrides) -> Trainer:
    data = tiny_voc(tmp_path / "data", train=8, val=2)
    config = TrainConfig(data=str(data), input_shape=[64, 64], epochs=epochs, batch_size=2, workers=0, device="cpu",
                         save_dir=str(tmp_path / "logs"), name="run", amp=False, eval_period=0, preview=False,
                         augment={"mosaic": 0.0, "mixup": 0.0}, warmup_epochs=0.5, **overrides)
    return Trainer(config)


def _all_finite(trainer: Trainer) -> dict[str, bool]:
    """Which parts of the training state hold only finite numbers."""
    def finite(tensors) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
    optimizer_tensors = [v for state in trainer.optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor)]
    return {"weights": finite(trainer.model.parameters()), "bn_buffers": finite(trainer.model.buffers()),
            "ema": finite(trainer.ema.module.state_dict().values()), "optimizer": finite(optimizer_tensors)
            and len(optimizer_tensors) > 0}


def _inject_loss(trainer: Trainer, bad_steps: dict[int, float]) -> dict:
    """Multiply the total loss by bad_steps[step] (nan or inf) at those global steps."""
    real, counter = trainer.loss_fn, {"step": 0, "injected": 0}

    def loss_fn(outputs, targets):
        losses = real(outputs, targets)
        if counter["step"] in bad_steps:
            losses = {**losses, "total": losses["total"] * bad_steps[counter["step"]]}
            counter["injected"] += 1
        counter["step"] += 1
        return losses

    trainer.loss_fn = loss_fn
    return counter


def _inject_forward(trainer: Trainer, bad_steps: set[int]) -> dict:
    counter = {"step": 0, "injected": 0}

    def pre_hook(module, inputs):
        step = counter["step"]
        counter["step"] += 1
        if step in bad_steps:
            counter["injected"] += 1
            return (inputs[0] * float("nan"),)
        return None

    trainer.model.register_forward_pre_hook(pre_hook)
    return counter


def test_non_finite_batches_are_skipped_and_state_stays_finite(tmp_path):
    trainer = _trainer(tmp_path)  # 8 images, batch 2: 4 steps per epoch, 8 in all
    # NaN activations at steps 1 and 6 (they reach the BatchNorm running statistics before the loss is seen);
    # a NaN loss at step 2 and an inf loss at step 5 (e.g. from a degenerate target)
    forward = _inject_forward(trainer, {1, 6})
    loss = _inject_loss(trainer, {2: float("nan"), 5: float("inf")})
    state = trainer.fit()
    assert state.epoch == 2 and forward["injected"] == 2 and loss["injected"] == 2
    assert [row["skipped_steps"] for row in state.history] == [2, 2]
    assert all(math.isfinite(row["train/total"]) for row in state.history)
    assert _all_finite(trainer) == {"weights": True, "bn_buffers": True, "ema": True, "optimizer": True}
    checkpoint = load_checkpoint(trainer.run_dir / "last.pth")
    assert all(torch.isfinite(t).all() for t in checkpoint["ema"].values() if t.is_floating_point())
    print("numeric faults:", json.dumps({"injected": 4, "survived": 4, "epochs_lost": 0}))


def test_many_non_finite_losses_in_a_row_stop_training(tmp_path):
    trainer = _trainer(tmp_path, epochs=3, max_bad_steps=3)
    _inject_loss(trainer, dict.fromkeys(range(4, 100), float("nan")))  # epoch 1 is clean, then every step diverges
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses.*--lr"):
        trainer.fit()
    checkpoint = load_checkpoint(trainer.run_dir / "last.pth")  # the last good epoch is kept
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
