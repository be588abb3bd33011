"""Fault suite, crash consistency of results: eval.py and predict.py are SIGKILLed halfway through writing a file
(metrics.json, a plot, a labels .txt, an annotated picture) and the run folder is then checked: every file under its
final name is complete (JSON parses, pictures decode to their end, label lines have six fields), and a run with a
metrics.json is a finished one. The kill comes from inside the child, at the first write to a file whose name holds
a given text: whatever the code's own write path is (builtins.open and pathlib both go through io.open),
half of the bytes reach the disk and then the process dies. The test prints its counts as JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.fault_helpers import ROOT, child_env, cli_many, tiny_voc
from tests.synthetic import write_weights
from utils.model.config import ModelConfig, build_model

pytestmark = pytest.mark.slow

# Run as `python -c KILLER <name part> <script> args...`: io.open (and so builtins.open and pathlib's writes) is
# wrapped so that the first file opened for writing whose name contains <name part> gets half of its first write,
# then the process SIGKILLs itself.
KILLER = r"""
import builtins, io, os, runpy, signal, sys
part, script = sys.argv[1], sys.argv[2]
real_open = io.open

class HalfThenDie:
    def __init__(self, handle):
        self.handle = handle
    def write(self, data):
        self.handle.write(data[: max(len(data) // 2, 1)])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

def killing_open(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    if any(m in mode for m in "wax") and part in os.fspath(file if not isinstance(file, int) else ""):
        return HalfThenDie(handle)
    return handle

io.open = builtins.open = killing_open
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def run_killed(part: str, script: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, part, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          encoding="utf-8", errors="replace", timeout=600)


def complete(path: Path) -> bool:
    """Whether a result file is whole: JSON parses, a JPEG ends with its end marker, a PNG with IEND, label lines
    have six numbers."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    if path.suffix == ".jpg":
        return data.rstrip(b"\x00").endswith(b"\xff\xd9") and cv2.imdecode(np.frombuffer(data, np.uint8), 1) is not None
    if path.suffix == ".png":
        return data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".txt":
        return data.endswith(b"\n") and all(len(line.split()) == 6 for line in data.decode().splitlines())
    return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    data = tiny_voc(root / "data", train=2, val=2)
    torch.manual_seed(0)
    config = ModelConfig(classes=["circle", "square", "triangle"], input_shape=[64, 64])
    model = build_model(config).eval()
    with torch.no_grad():  # confident detections everywhere, so label files have lines
        for head in model.head_output_convs():
            head.weight.mul_(0.01)
            head.bias.view(3, 8)[0, 4] = head.bias.view(3, 8)[0, 5] = 6.0
    return root, data, write_weights(root / "w.pth", model.state_dict(), config)


def test_killed_mid_write_leaves_no_complete_looking_result(setup, tmp_path):
    root, data, weights = setup
    images = data / "VOC2007" / "JPEGImages"
    eval_args = ["--weights", weights, "--data", data, "--split", "val", "--device", "cpu", "--workers", "0",
                 "--save-json"]
    predict_args = ["--weights", weights, "--source", images, "--device", "cpu", "--save-txt", "--max-det", "5"]
    # (case, the file-name part whose first write is cut, script, arguments)
    cases = [("eval: killed writing a plot", ".png", "eval.py", eval_args),
             ("eval: killed writing detections.json", "detections.json", "eval.py", eval_args),
             ("eval: killed writing metrics.json", "metrics.json", "eval.py", eval_args),
             ("predict: killed writing a labels file", ".txt", "predict.py", predict_args),
             ("predict: killed writing a picture", ".jpg", "predict.py", predict_args)]
    failures = []
    for number, (name, part, script, args) in enumerate(cases):
        out = tmp_path / f"case{number}"
        result = run_killed(part, script, *args, "--save-dir", out, "--name", "run")
        run = out / "run"
        files = [p for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")] if run.exists() else []
        broken = [str(p.relative_to(run)) for p in files if not complete(p)]
        finished_looking = script == "eval.py" and (run / "metrics.json").exists()
        if result.returncode != -9 or broken or finished_looking:
            failures.append(f"{name}: exit {result.returncode}, cut files under their final names {broken}, "
                            f"metrics.json present {finished_looking}\n{result.stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
    # a whole run afterwards: the files the killed ones left behind do not get in its way
    done, = cli_many([("eval.py", [*eval_args, "--save-dir", tmp_path / "case2", "--name", "run"])])
    assert done.returncode == 0 and complete(tmp_path / "case2" / "run2" / "metrics.json"), done.stdout[-2000:]
    print("results:", json.dumps({"injected": len(cases), "survived": len(cases), "cut files looking whole": 0}))
