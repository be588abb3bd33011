"""Shared pytest fixtures. Paths and helpers live in tests/paths.py and tests/synthetic.py (imported as tests.*)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core CI machines; keep torch from oversubscribing them."""
    torch.set_num_threads(2)
    yield
