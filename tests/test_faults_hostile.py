"""Hostile files: checkpoints that would run code when unpickled are refused (and the code never runs) by train.py
--weights / --resume, eval.py --weights and predict.py --weights; XML entity bombs and external entities are refused
fast without a memory blow-up, whatever their encoding; paths with spaces and non-ASCII characters work for --data,
--save-dir, --weights and --source."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from tests.fault_helpers import ROOT, TRAIN_FAST, child_env, cli, cli_many, tiny_voc
from utils.model.checkpoint import CheckpointError, load_checkpoint


class RunsCode:
    """Unpickling this calls open(marker, 'w'): the marker file appearing proves that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """(folder, marker path): evil.pth (torch zip format), evil_raw.pth (a plain pickle), run/last.pth (--resume)."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "code_ran.txt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(str(marker)), "epoch": 3}, folder / "evil.pth")
    with open(folder / "evil_raw.pth", "wb") as handle:
        pickle.dump({"model": RunsCode(str(marker))}, handle, protocol=2)
    (folder / "run").mkdir()
    shutil.copy(folder / "evil.pth", folder / "run" / "last.pth")
    assert not marker.exists()
    return folder, marker


@pytest.mark.parametrize("name", ["evil.pth", "evil_raw.pth"])
def test_load_checkpoint_refuses_code(evil, name):
    folder, marker = evil
    with pytest.raises(CheckpointError, match="refused, because unpickling it could run code"):
        load_checkpoint(folder / name)
    assert not marker.exists()


CLI_CASES = {  # every way a checkpoint enters the command-line tools
    "train --weights": ("train.py", ["--weights", "{dir}/evil.pth", "--epochs", "1"]),
    "train --resume": ("train.py", ["--resume", "{dir}/run"]),
    "eval --weights": ("eval.py", ["--weights", "{dir}/evil.pth", "--workers", "0"]),
    "predict --weights": ("predict.py", ["--weights", "{dir}/evil.pth", "--source", "{data}/VOC2007/JPEGImages"]),
}


@pytest.mark.slow
def test_clis_refuse_code_running_checkpoints(evil, tmp_path):
    folder, marker = evil
    data = tiny_voc(tmp_path / "data", train=2, val=1)
    extra = {"train.py": ["--data", str(data), "--save-dir", str(tmp_path / "logs"), *TRAIN_FAST],
             "eval.py": ["--data", str(data), "--device", "cpu", "--save-dir", str(tmp_path / "logs"), "--name",
                         "eval"],
             "predict.py": ["--device", "cpu", "--save-dir", str(tmp_path / "logs"), "--name", "predict"]}
    jobs = [(script, [a.format(dir=folder, data=data) for a in args] + extra[script])
            for script, args in CLI_CASES.values()]
    failures = []
    for name, result in zip(CLI_CASES, cli_many(jobs), strict=True):
        if (result.returncode == 0 or "Traceback" in result.stdout
                or "refused, because unpickling it could run code" not in result.stdout):
            failures.append(f"{name}: exit {result.returncode}\n{result.stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert not marker.exists(), "a command-line tool ran the code inside the checkpoint"
    print("hostile checkpoints:", json.dumps({"injected": len(CLI_CASES), "survived": len(CLI_CASES),
                                              "code executed": 0}))


LAUGHS = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE lolz [<!ENTITY l0 "lol">'
          + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
          + ']>\n<annotation><filename>&l9;</filename></annotation>\n')  # 3 x 10^9 characters once expanded
PARAMETER_LAUGHS = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE a [<!ENTITY % p0 "lol">'
                    + "".join(f'<!ENTITY % p{i} "{("%%p%d;" % (i - 1)) * 10}">' for i in range(1, 8))
                    + ']>\n<annotation/>\n')
EXTERNAL = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
            '<annotation><filename>&x;</filename><object><name>&x;</name></object></annotation>\n')

XML_CHECK = r"""
import json, resource, sys, time
from pathlib import Path
from utils.data.annotations import AnnotationError
from utils.data.voc_xml import parse_voc_xml
results = {}
for path in sorted(Path(sys.argv[1]).glob("*.xml")):
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        parse_voc_xml(path)
        message = None
    except AnnotationError as err:
        message = str(err)
    results[path.name] = {"seconds": time.perf_counter() - start, "message": message,
                          "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}
print(json.dumps(results))
"""


def test_xml_entity_bombs_and_external_entities_refused_fast(tmp_path):
    for name, template in (("laughs", LAUGHS), ("parameter", PARAMETER_LAUGHS), ("external", EXTERNAL)):
        for encoding in ("utf-8", "utf-16"):  # utf-16 hides '<!DOCTYPE' from a byte search
            (tmp_path / f"{name}_{encoding}.xml").write_bytes(template.replace("{enc}", encoding).encode(encoding))
    # a fresh process, so the resident-memory peak measures these files alone
    # python -c puts the working directory (the repository root) on sys.path: utils imports as for users
    out = subprocess.run([sys.executable, "-c", XML_CHECK, str(tmp_path)], cwd=ROOT, env=child_env(), timeout=60,
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    results = json.loads(out)
    assert len(results) == 6
    for name, result in results.items():
        assert result["message"] and "DOCTYPE/ENTITY declaration, refused" in result["message"], (name, result)
        assert name in result["message"]
        assert result["seconds"] < 1.0 and result["rss_growth_mib"] < 20, (name, result)


@pytest.mark.slow
def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    data = tiny_voc(tmp_path / "数据 集" / "my data", train=4, val=2)
    pictures = tmp_path / "图片 folder"
    pictures.mkdir()
    for source in sorted((data / "VOC2007" / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(source, pictures / f"照片 {source.name}")
    logs = tmp_path / "日志 logs"
    trained = cli("train.py", "--data", data, "--epochs", "1", "--save-dir", logs, "--name", "运行 1", *TRAIN_FAST)
    assert trained.returncode == 0, trained.stdout[-3000:]
    weights = logs / "运行 1" / "best.pth"
    assert load_checkpoint(weights)["epoch"] == 1
    evaluated, predicted = cli_many([
        ("eval.py", ["--weights", weights, "--data", data, "--split", "val", "--device", "cpu", "--workers", "0",
                     "--save-dir", str(logs), "--name", "评估 eval"]),
        ("predict.py", ["--weights", weights, "--source", pictures, "--device", "cpu", "--conf", "0.01",
                        "--save-dir", str(logs), "--name", "预测 predict"])])
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    metrics = json.loads((logs / "评估 eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 2 and "数据 集" in metrics["data"]
    assert predicted.returncode == 0, predicted.stdout[-3000:]
    written = sorted(p.name for p in (logs / "预测 predict").iterdir())
    assert written == sorted(p.name for p in pictures.iterdir()), written
    assert all(cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_COLOR) is not None
               for p in (logs / "预测 predict").iterdir())
    assert "Traceback" not in trained.stdout + evaluated.stdout + predicted.stdout
