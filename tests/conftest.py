"""Shared pytest set-up. Paths and helpers live in tests/paths.py and tests/synthetic.py (imported as tests.*).

Tests write only inside pytest's temporary folders: before collection (so before any test module imports matplotlib
or torch) every place a library writes by default is pointed into this session's base temporary folder, for this
process and every command-line tool it starts (they inherit the environment), and an autouse check fails a test that
leaves something new in the repository or the project's real weights cache. Passing tests' folders are deleted as
soon as they end (`tmp_path_retention_policy = "failed"` in pyproject.toml), so a run leaves little behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.paths import ROOT

# Where libraries write when nobody tells them otherwise: HOME-derived caches and configs, matplotlib's font cache,
# torch hub and Inductor caches, this project's weights cache (utils/model/download.py), the temporary folder.
PRIVATE_DIRS = {"HOME": "home", "XDG_CACHE_HOME": "home/.cache", "XDG_CONFIG_HOME": "home/.config",
                "XDG_DATA_HOME": "home/.local/share", "MPLCONFIGDIR": "matplotlib", "TORCH_HOME": "torch",
                "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton", "YOLO_CACHE_DIR": "weights",
                "TMPDIR": "tmp"}
# Folders a test could write into by accident (a command run without --save-dir, a download without a cache dir).
WATCHED = (ROOT, ROOT / "logs", ROOT / "VOCdevkit", ROOT / "model_data", ROOT / "tests",
           Path.home() / ".cache" / "yolov4-tiny-attention")  # Path.home() read before HOME moves
IGNORED = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has made its factory
def pytest_configure(config: pytest.Config) -> None:
    # pytest's own factory, so the folder sits under this session's basetemp and goes with it (created before
    # TMPDIR moves, which would otherwise move basetemp too)
    base = config._tmp_path_factory.mktemp("session-home", numbered=False)
    for variable, relative in PRIVATE_DIRS.items():
        (base / relative).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(base / relative)
    tempfile.tempdir = None  # tempfile caches the folder it found first; let it read TMPDIR again


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder)) - IGNORED
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def _writes_stay_in_tmp():
    """Fail a test that left a new file or folder in the repository or the real weights cache."""
    before = {folder: _listing(folder) for folder in WATCHED}
    yield
    new = [str(folder / name) for folder, names in before.items() for name in sorted(_listing(folder) - names)]
    if new:
        pytest.fail(f"the test wrote outside its temporary folder: {', '.join(new)}; give it tmp_path (--save-dir, "
                    "YOLO_CACHE_DIR, ...)", pytrace=False)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core CI machines; keep torch from oversubscribing them."""
    torch.set_num_threads(2)
    yield
