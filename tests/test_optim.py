"""Optimiser groups, the LR schedule and the EMA."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from nets.yolo import YoloBody
from utils.train.optim import DEFAULT_LR, LRSchedule, build_optimizer, ema_model, parameter_groups, scaled_lr


def test_weight_decay_only_on_conv_and_linear_weights():
    model = YoloBody([[3, 4, 5], [1, 2, 3]], 2, "se")
    decay, no_decay = parameter_groups(model, 5e-4)
    decay_ids = {id(p) for p in decay["params"]}
    for name, param in model.named_parameters():
        is_weight = name.endswith("weight") and param.dim() > 1  # conv/linear weights; BN weights are 1-D
        assert (id(param) in decay_ids) == is_weight, name
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0


def test_lr_scaling_is_bounded():
    assert scaled_lr(1e-2, 64, "sgd") == pytest.approx(1e-2)
    assert scaled_lr(1e-2, 16, "sgd") == pytest.approx(2.5e-3)
    assert scaled_lr(1e-2, 1, "sgd") == pytest.approx(5e-4)  # floor
    assert scaled_lr(1e-2, 1024, "sgd") == pytest.approx(5e-2)  # ceiling


def test_schedule_warmup_then_cosine_to_minimum():
    schedule = LRSchedule(epochs=100, warmup_epochs=3, warmup_start=0.1, min_ratio=0.01)
    assert schedule.factor(0) == pytest.approx(0.1)
    assert schedule.factor(1.5) == pytest.approx(0.55)
    assert schedule.factor(3) == pytest.approx(1.0)
    mid = 3 + (100 - 3) / 2
    assert schedule.factor(mid) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule.factor(100) == pytest.approx(0.01)
    factors = [schedule.factor(e / 10) for e in range(30, 1000)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


def test_step_schedule_and_short_run_warmup():
    schedule = LRSchedule(epochs=6, warmup_epochs=3, kind="step", steps=3, min_ratio=0.01)
    assert schedule.warmup_epochs == 2  # at most a third of the run
    assert schedule.factor(2) == pytest.approx(1.0)
    assert schedule.factor(5.99) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        LRSchedule(epochs=5, kind="linear")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_build(name):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, name, 1e-3, 0.9, 5e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4


def test_ema_follows_weights_with_ramped_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    ema = ema_model(model, decay=0.9, tau=1.0)
    for _ in range(50):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(2, 1, 3, 3))
        ema.update_parameters(model)
    lag = float(model[0].weight - ema.module[0].weight)
    assert 0 < lag < 20  # averaged, trailing behind, but not stuck at the start
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked)


def test_lr_bounds_follow_an_explicit_base_rate():
    assert scaled_lr(1e-3, 4, "adam") == pytest.approx(3e-4)  # the reference's floor for Adam
    assert scaled_lr(3e-3, 4, "adam") == pytest.approx(9e-4)  # floor moved with the chosen base
    assert scaled_lr(1e-1, 8, "sgd") == pytest.approx(1.25e-2)


@pytest.mark.parametrize("batch", [1, 8, 64, 1024])
def test_adamw_keeps_its_rate_at_every_batch_size(batch):
    """AdamW (the default recipe's) is not scaled: its default rate, or the one given, whatever the batch."""
    assert scaled_lr(DEFAULT_LR["adamw"], batch, "adamw") == DEFAULT_LR["adamw"] == 2e-3
    assert scaled_lr(5e-4, batch, "adamw") == 5e-4
