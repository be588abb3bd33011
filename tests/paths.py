"""Where the tests find the repository and the shared reference data (skipped with a stated reason when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("YOLO_SHARED_DIR", ROOT.parent / "shared"))
RACCOON = SHARED / "data" / "raccoon_dataset"
TINY_COCO = SHARED / "data" / "tiny_coco"
DARKNET_CFG = SHARED / "data" / "darknet" / "yolov4-tiny.cfg"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data folder {SHARED} is absent")
