"""Training: `from utils.train import TrainConfig, train` then `train(config, callbacks=[...])`.

TrainConfig is every training option (utils/train/config.py); `train` runs a fresh or resumed run
(utils/train/trainer.py); a callback is any object with some of the event methods of utils/train/callbacks.py
(`Callback` documents them). The engine is imported on first use, so `import utils.train.loss` stays light.
"""
from __future__ import annotations

from typing import Any

from utils.train.config import TrainConfig

__all__ = ["Callback", "TrainConfig", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "Trainer"):
        from utils.train import trainer
        return getattr(trainer, name)
    if name == "Callback":
        from utils.train.callbacks import Callback
        return Callback
    raise AttributeError(f"module 'utils.train' has no attribute {name!r}")
