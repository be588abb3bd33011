"""Fault suite, options: a number outside its range is one line naming the option and the range, before any work, in
every command-line tool (train.py, eval.py, predict.py, python -m utils.ablate / utils.anchors / utils.sample_data,
nets.summary); the same values read from a --config file or a resumed checkpoint are refused naming the file.
The CLI tests print their counts as JSON."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from tests.fault_helpers import ROOT, child_env, cli_many
from utils.common.cli import NumberRange, positive_int, probability, workers
from utils.train.config import TrainConfig

# (command, arguments, the flag the error line must name, the range words it must hold)
RANGE_CASES = [
    ("train.py", ["--lr", "nan"], "--lr", "finite number > 0"),
    ("train.py", ["--lr", "-0.01"], "--lr", "finite number > 0"),
    ("train.py", ["--workers", "10000"], "--workers", "4 per CPU"),
    ("train.py", ["--batch-size", "0"], "--batch-size", "integer >= 1"),
    ("train.py", ["--epochs", "-1"], "--epochs", "integer >= 1"),
    ("train.py", ["--epochs", "2.5"], "--epochs", "integer >= 1"),
    ("train.py", ["--mosaic", "2"], "--mosaic", "[0, 1]"),
    ("train.py", ["--momentum", "1"], "--momentum", "[0, 1)"),
    ("train.py", ["--weight-decay", "inf"], "--weight-decay", "finite number >= 0"),
    ("train.py", ["--multi-scale-range", "0.5,inf"], "--multi-scale-range", "(0, 4]"),
    ("train.py", ["--seed", "-1"], "--seed", "[0, 4294967295]"),
    ("eval.py", ["--conf", "2"], "--conf", "[0, 1]"),
    ("eval.py", ["--iou", "-1"], "--iou", "[0, 1]"),
    ("eval.py", ["--max-det", "0"], "--max-det", "integer >= 1"),
    ("eval.py", ["--workers", "-3"], "--workers", "integer in [0, "),
    ("predict.py", ["--conf", "2"], "--conf", "[0, 1]"),
    ("predict.py", ["--iou", "-1"], "--iou", "[0, 1]"),
    ("predict.py", ["--stream-timeout", "nan"], "--stream-timeout", "(0, 86400]"),
    ("-m utils.ablate", ["--lr", "nan"], "--lr", "finite number > 0"),  # a train.py flag passed through
    ("-m utils.ablate", ["--seeds", "0"], "--seeds", "integer >= 1"),
    ("-m utils.ablate", ["--nproc-per-run", "0"], "--nproc-per-run", "integer >= 1"),
    ("-m utils.anchors", ["--data", "x", "-n", "0"], "--num-anchors", "integer >= 1"),
    ("-m utils.anchors", ["--data", "x", "--iters", "0"], "--iters", "integer >= 1"),
    ("-m utils.sample_data", ["--images", "0"], "--images", "[1, 100000]"),
    ("-m utils.sample_data", ["--quality", "101"], "--quality", "[1, 100]"),
    ("-m nets.summary", ["--num-classes", "300000"], "--num-classes", "[1, 10000]"),
]
# Tools whose --help and range errors must not wait for torch (measured with python -X importtime, so the check does
# not depend on how busy the machine is); predict.py, utils.ablate and nets.summary import it first (their modules
# belong to the deployment, study and network code) but still refuse before any work.
NO_TORCH = ("train.py", "eval.py", "-m utils.anchors", "-m utils.sample_data")


def run_tool(command: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python <script> args` or `python -m <module> args` from the repository root, output merged; tools in NO_TORCH
    run under -X importtime, whose lines (`import time: ... | module`) are removed from the output into `.imported`."""
    prefix = command.split() if command.startswith("-m ") else [str(ROOT / command)]
    importtime = ["-X", "importtime"] if command in NO_TORCH else []
    result = subprocess.run([sys.executable, *importtime, *prefix, *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                            errors="replace", timeout=timeout)
    lines = result.stdout.splitlines()
    result.imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    result.stdout = "\n".join(line for line in lines if not line.startswith("import time:"))
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str | None:
    """The output's only line holding 'error:', or None when there are none or several."""
    lines = [line for line in result.stdout.splitlines() if "error:" in line]
    return lines[0] if len(lines) == 1 else None


def test_ranges_are_argparse_types_and_file_checks():
    assert probability("0.25") == 0.25 and positive_int("3") == 3
    for bad in ("nan", "inf", "-0.1", "1.5", "x", ""):
        with pytest.raises(Exception, match="is not a number in"):
            probability(bad)
    with pytest.raises(Exception, match="integer >= 1"):
        positive_int("2.5")
    assert workers.high >= 4 and NumberRange(float, 0, 1, high_open=True).text == "a number in [0, 1)"
    for field, value, flag in (("lr", float("nan"), "--lr"), ("batch_size", 0, "--batch-size"),
                               ("workers", 10**6, "--workers"), ("epochs", True, "--epochs"),
                               ("augment", {"hsv_h": 0.9}, "--hsv-h"), ("multi_scale_range", [2, 1], "low 2")):
        with pytest.raises(Exception, match=flag):
            TrainConfig(**{field: value})


def test_every_tool_refuses_values_outside_their_range_in_one_line(tmp_path):
    save_dir = tmp_path / "logs"
    extra = {"train.py": ["--save-dir", str(save_dir)], "eval.py": ["--save-dir", str(save_dir)],
             "predict.py": ["--save-dir", str(save_dir)], "-m utils.ablate": ["--study", str(save_dir / "study")],
             "-m utils.sample_data": ["--out", str(save_dir / "sample")]}
    jobs = [(command, [*args, *extra.get(command, [])]) for command, args, _, _ in RANGE_CASES]
    start = time.monotonic()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        timed = list(pool.map(lambda job: _timed(run_tool, *job), jobs))
    failures = []
    for (command, args, flag, words), (result, seconds) in zip(RANGE_CASES, timed, strict=True):
        line = one_error_line(result)
        slow_imports = sorted({"torch", "torchvision", "albumentations"} & result.imported)
        if (result.returncode != 2 or line is None or f"argument {flag}" not in line.replace("-n/", "")
                or words not in line or "Traceback" in result.stdout or slow_imports):
            failures.append(f"{command} {' '.join(args)}: exit {result.returncode} in {seconds:.1f} s, imported "
                            f"{slow_imports}\n{result.stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert not save_dir.exists(), "a refused command created its output folder"
    no_torch = [s for (command, *_), (_, s) in zip(RANGE_CASES, timed, strict=True) if command in NO_TORCH]
    print("options out of range:", json.dumps({"injected": len(RANGE_CASES), "survived": len(RANGE_CASES),
                                               "folders created": 0, "torch imported by": "predict.py, "
                                               "utils.ablate, nets.summary only",
                                               "slowest_without_torch_s": round(max(no_torch), 2),
                                               "total_s": round(time.monotonic() - start, 1)}))


def _timed(fn, *args) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def training_checkpoint(path, **train_config) -> None:
    """A checkpoint that --resume reads as far as its TrainConfig (no weights are needed to refuse it)."""
    torch.save({"format_version": 1, "epoch": 1, "model": {}, "optimizer": {}, "config": {"classes": ["a"]},
                "train_config": {**TrainConfig().to_dict(), **train_config}}, path)


@pytest.mark.slow
def test_values_from_files_and_huge_inputs_are_refused_naming_their_source(tmp_path):
    """--config values and a resumed checkpoint's values obey the flags' ranges; an 8192 input is one line."""
    configs = {"nan_lr.yaml": "lr: .nan\n", "many_workers.yaml": "workers: 100000\n",
               "zero_batch.yaml": "batch_size: 0\n", "bad_mosaic.yaml": "augment: {mosaic: 3}\n"}
    for name, text in configs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "run").mkdir()
    training_checkpoint(tmp_path / "run" / "last.pth", lr=float("nan"))
    logs = tmp_path / "logs"
    cases = [(["--config", str(tmp_path / name)], [name, "--config", flag])
             for name, flag in zip(configs, ("--lr", "--workers", "--batch-size", "--mosaic"), strict=True)]
    cases += [(["--resume", str(tmp_path / "run")], ["last.pth", "--lr", "finite number > 0"]),
              (["--input-shape", "8192"], ["8192", "larger than 4096"])]
    results = cli_many([("train.py", [*args, "--save-dir", str(logs), "--device", "cpu"]) for args, _ in cases])
    failures = []
    for (args, words), result in zip(cases, results, strict=True):
        line = one_error_line(result)
        if result.returncode != 1 or line is None or not all(w in line for w in words) or "Traceback" in result.stdout:
            failures.append(f"train.py {' '.join(args)}: exit {result.returncode}\n{result.stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert not logs.exists() or not any(logs.iterdir()), "a refused run left a run folder"
    print("option values from files:", json.dumps({"injected": len(cases), "survived": len(cases), "lost": 0}))
