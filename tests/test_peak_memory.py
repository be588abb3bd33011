"""benchmarks.peak_memory: a command's own peak memory, not its parent's (the fault suites bound memory with it)."""
from __future__ import annotations

import os
import sys

from benchmarks.peak_memory import run_with_peak_rss

MIB = 1 << 20


def test_a_large_parent_does_not_count_and_the_command_does(tmp_path):
    ballast = bytearray(os.urandom(1)) * (400 * MIB)  # touched pages: this process is now > 400 MiB resident
    small = run_with_peak_rss([sys.executable, "-c", "pass"], cwd=tmp_path)
    big = run_with_peak_rss([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                            cwd=tmp_path)
    del ballast
    assert small.exit_code == 0 and big.exit_code == 0
    # an empty interpreter, whatever its parent (wait4 on a direct child reports > 400 MiB here: Linux counts the
    # address space the child replaced at exec)
    assert small.peak_rss_bytes < 100 * MIB, small
    assert 300 * MIB <= big.peak_rss_bytes < 400 * MIB, big


def test_exit_codes_and_the_time_limit(tmp_path):
    assert run_with_peak_rss([sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path).exit_code == 3
    killed = run_with_peak_rss([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path, timeout=1)
    assert killed.exit_code is None and killed.seconds < 30
