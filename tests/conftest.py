"""Shared pytest fixtures and paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("YOLO_SHARED_DIR", ROOT.parent / "shared"))
RACCOON = SHARED / "data" / "raccoon_dataset"
TINY_COCO = SHARED / "data" / "tiny_coco"
DARKNET_CFG = SHARED / "data" / "darknet" / "yolov4-tiny.cfg"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data folder {SHARED} is absent")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core CI machines; keep torch from oversubscribing them."""
    import torch
    torch.set_num_threads(2)
    yield
