"""Benchmark scripts: run as `python benchmarks/bench_<what>.py`; each prints JSON lines of what it measured."""
