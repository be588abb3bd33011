"""Bad commands: each exits non-zero with one clear sentence (no traceback without --verbose) and leaves every file
already in the logs folder untouched (same bytes, same modification time)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.fault_helpers import TRAIN_FAST, cli, cli_many, snapshot, tiny_voc
from tests.synthetic import write_weights
from utils.model.config import ModelConfig, build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny dataset, a logs folder holding earlier runs, weights for 5 classes and a few bad inputs."""
    root = tmp_path_factory.mktemp("commands")
    data = tiny_voc(root / "data", train=2, val=1)
    empty = tiny_voc(root / "empty", train=2, val=1)
    (empty / "VOC2007" / "ImageSets" / "Main" / "train.txt").write_text("", encoding="utf-8")
    (empty / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("\n", encoding="utf-8")
    logs = root / "logs"
    for run, names in {"exp": ("last.pth", "best.pth", "results.csv", "train.log"), "eval": ("metrics.json",),
                       "predict": ("a.jpg",), "exp2": ("train.log",)}.items():
        (logs / run).mkdir(parents=True)
        for name in names:
            (logs / run / name).write_bytes(f"earlier {run}/{name}".encode())
    five = ModelConfig(classes=[f"class{i}" for i in range(5)], input_shape=[64, 64])
    torch.manual_seed(0)
    state = build_model(five).state_dict()
    torch.save(state, root / "five_classes_state_dict.pth")
    write_weights(root / "five.pth", state, five)
    (root / "three.txt").write_text("circle\nsquare\ntriangle\n", encoding="utf-8")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "notes.xyz").write_text("not an image", encoding="utf-8")
    return root, data, empty, logs


# (id, script, arguments, words that the one error line must contain)
CASES = [
    ("wrong-phi", "train.py", ["--phi", "7", "--data", "{data}"], ["invalid phi 7", "none"]),
    ("input-not-multiple-of-32", "train.py", ["--input-shape", "100", "--data", "{data}"], ["100", "multiple of 32"]),
    ("missing-dataset", "train.py", ["--data", "{root}/no such folder"], ["does not exist", "--data"]),
    ("empty-train-split", "train.py", ["--data", "{empty}"], ["train", "no usable images"]),
    ("resume-without-checkpoint", "train.py", ["--resume", "{logs}/exp2"], ["no last.pth", "without --resume"]),
    ("other-class-count", "eval.py", ["--weights", "{root}/five_classes_state_dict.pth", "--classes",
                                      "{root}/three.txt", "--data", "{data}"], ["5 classes", "3 were requested"]),
    ("empty-test-split", "eval.py", ["--weights", "{root}/five.pth", "--data", "{empty}"], ["test", "no usable"]),
    ("unknown-source", "predict.py", ["--weights", "{root}/five.pth", "--source", "{root}/missing.jpg"],
     ["missing.jpg", "not found"]),
    ("unsupported-source", "predict.py", ["--weights", "{root}/five.pth", "--source", "{root}/notes.xyz"],
     ["unsupported type .xyz"]),
    ("broken-video", "predict.py", ["--weights", "{root}/five.pth", "--source", "{root}/broken.mp4"],
     ["broken.mp4", "cannot be opened"]),
]
EXTRA = {"train.py": [*TRAIN_FAST, "--epochs", "1"], "eval.py": ["--device", "cpu", "--workers", "0"],
         "predict.py": ["--device", "cpu"]}
SAVE_DIR = {"train.py": "{logs}", "eval.py": "{logs}", "predict.py": "{logs}"}


def test_bad_commands_fail_with_one_clear_sentence(setup):
    """All cases run two at a time; every case is checked and all failures are reported together."""
    root, data, empty, logs = setup
    fill = {"root": root, "data": data, "empty": empty, "logs": logs}
    before = snapshot(logs)
    jobs = []
    for name, script, args, _ in CASES:
        # the case's own options come after the fast defaults, so they win; train runs get their own folder name
        own = ["--name", name] if script == "train.py" else []
        jobs.append((script, EXTRA[script] + [a.format(**fill) for a in args] + own
                     + ["--save-dir", SAVE_DIR[script].format(**fill)]))
    failures = []
    for (name, _, _, words), result in zip(CASES, cli_many(jobs), strict=True):
        errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
        if (result.returncode == 0 or "Traceback" in result.stdout or len(errors) != 1
                or not all(word in errors[0] for word in words)):
            failures.append(f"{name}: exit {result.returncode}\n{result.stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
    after = snapshot(logs)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file in logs/ was changed"
    assert set(before) <= set(after), "a file in logs/ was deleted"
    print("bad commands:", json.dumps({"injected": len(CASES), "survived": len(CASES) - len(failures),
                                       "files changed or deleted": 0, "new files": sorted(set(after) - set(before))}))


def test_verbose_shows_the_traceback(setup):
    root, data, empty, logs = setup
    result = cli("train.py", "--data", f"{root}/no such folder", "--verbose", "--save-dir", logs, *TRAIN_FAST)
    assert result.returncode != 0 and "Traceback" in result.stdout and "does not exist" in result.stdout
