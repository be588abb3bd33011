"""Run a command and measure its own peak resident memory, whatever the size of the process that starts it.

Linux counts into a process's `ru_maxrss` the high-water mark of the address space it replaced at exec, so a child
forked (or vforked) from a 2 GiB pytest process reports at least 2 GiB whatever it did itself. The command therefore
runs as the grandchild of a small launcher interpreter (about 20 MiB), which reaps it with `os.wait4` and reports its
rusage; the launcher also applies the time limit, so a killed command is still measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = r"""
import json, os, subprocess, sys, time
report, limit, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
child = subprocess.Popen(command)
deadline, timed_out = time.monotonic() + limit, False
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline and not timed_out:
        child.kill()
        timed_out = True
    time.sleep(0.02)
with open(report, "w", encoding="utf-8") as sink:
    json.dump({"status": status, "maxrss_kib": usage.ru_maxrss, "timed_out": timed_out}, sink)
"""


@dataclass(frozen=True)
class Measured:
    exit_code: int | None  # None when the time limit killed the command
    peak_rss_bytes: int
    seconds: float


def run_with_peak_rss(command: list[str], *, cwd: Path | str, env: dict | None = None, stdout=None,
                      timeout: float = 3600, preexec_fn=None) -> Measured:
    """Run `command` (output to `stdout`, stderr merged into it) and return its exit code, own peak RSS and time.
    `preexec_fn` (e.g. a resource limit) applies to the launcher and is inherited by the command."""
    handle, report = tempfile.mkstemp(prefix="peak_rss_", suffix=".json")
    os.close(handle)
    start = time.perf_counter()
    try:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, report, str(timeout), *map(str, command)],
                                    cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        try:
            launcher.wait(timeout + 60)  # the launcher kills the command at `timeout`; this only guards the launcher
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise
        seconds = time.perf_counter() - start
        if launcher.returncode:
            raise RuntimeError(f"could not run {command[:2]} (launcher exit {launcher.returncode}; see its output)")
        result = json.loads(Path(report).read_text(encoding="utf-8"))
    finally:
        os.unlink(report)
    code = None if result["timed_out"] else os.waitstatus_to_exitcode(result["status"])
    return Measured(code, result["maxrss_kib"] * 1024, seconds)
