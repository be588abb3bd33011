"""Fault suite, model files (issue round three): a .pth whose loading would allocate far more than the file (a zip
record deflating 3 GiB of zeros, a legacy pickle declaring a 1 GiB storage), stored configs out of bounds (300,000
classes, a 1 MB class name, NaN or negative anchors), malformed ONNX files (external data outside their folder,
truncated, unknown opset, no metadata), and class names with terminal escape sequences. Each is tried through
predict.py, eval.py or train.py: exit 1 with one `error:` line naming the file, no traceback, memory bounded; names
print escaped. The CLI test prints its counts as JSON."""
from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.peak_memory import run_with_peak_rss
from tests.fault_helpers import ROOT, TRAIN_FAST, child_env, tiny_voc
from tests.synthetic import write_weights
from utils.model.config import ModelConfig, build_model
from utils.model.load_budget import LoadBudgetError, check_load_budget

GIB = 1 << 30
RSS_LIMIT = 2 * GIB  # a command that imported torch and refused the file: well under 1 GiB; the bomb alone is 3 GiB


def run_measured(script: str, *args: object, timeout: float = 300) -> tuple[int, str, int]:
    """Run `python <script> args` from the repository root: (exit status, output, the command's own peak resident
    bytes; measured through a small launcher, so pytest's own size does not count)."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"run_{os.getpid()}_{id(args)}.txt"
    with open(out_path, "wb") as sink:
        measured = run_with_peak_rss([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                                     env=child_env(), stdout=sink, timeout=timeout)
    output = out_path.read_text(encoding="utf-8", errors="replace")
    out_path.unlink()
    return measured.exit_code, output, measured.peak_rss_bytes


# ------------------------------------------------------------------------------------------------- the files
def zip_bomb(path: Path, gib: int = 3) -> Path:
    """A torch.save zip whose tensor record is `gib` GiB of zeros, deflated (about 1 KB per MiB): torch.load would
    inflate it into one buffer before noticing that it does not fit the tensor."""
    torch.save({"model": {"w": torch.zeros(4)}, "config": {"classes": ["a"]}}, path)
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    compressor, mib = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)  # identical for every MiB after a full flush
    bomb = block * (gib * 1024) + compressor.flush()
    with open(path, "wb") as out:
        central = b""
        for name, data in records:
            method, size, body, crc = ((8, gib * GIB, bomb, 0) if name.endswith("/data/0")
                                       else (0, len(data), data, zlib.crc32(data)))
            offset = out.tell()
            fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0, crc, len(body), size)
            out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name.encode() + body)
            central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                        + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name.encode())
        start = out.tell()
        out.write(central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(records), len(records), len(central),
                                                         start, 0))
    return path


def legacy_bomb(path: Path) -> Path:
    """A legacy-format (non-zip) file whose pickle declares a storage of 2**28 floats (1 GiB) for a 1000-element
    tensor: torch allocates what the pickle declares before reading the data."""
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"M\xe8\x03", b"J" + struct.pack("<i", 1 << 28), 1))  # BININT2 1000 -> BININT 2**28
    return path


def stored_config(path: Path, **config) -> Path:
    """A checkpoint with this stored ModelConfig (and no weights: it is refused before they matter)."""
    torch.save({"format_version": 1, "model": {}, "config": {"classes": ["a"], **config}}, path)
    return path


def onnx_files(folder: Path) -> dict[str, Path]:
    """good.onnx and four broken variants: external data outside the folder, truncated, opset 99, no metadata."""
    onnx = pytest.importorskip("onnx", reason="ONNX cases need onnx (requirements-dev.txt)")
    from utils.deploy.export import export_onnx
    config = ModelConfig(classes=["a", "b"], input_shape=[64, 64])
    good = export_onnx(build_model(config).eval(), config, folder / "good.onnx")
    (folder / "truncated.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    model = onnx.load(str(good))
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(folder / "external.onnx"))
    model = onnx.load(str(good))
    model.opset_import[0].version = 99
    onnx.save(model, str(folder / "opset99.onnx"))
    model = onnx.load(str(good))
    del model.metadata_props[:]
    onnx.save(model, str(folder / "no_metadata.onnx"))
    return {name: folder / f"{name}.onnx" for name in ("external", "truncated", "opset99", "no_metadata")}


# ------------------------------------------------------------------------------------------------ in-process
def test_load_budget_refuses_bombs_and_passes_real_checkpoints(tmp_path):
    model = build_model(ModelConfig(classes=["a"], input_shape=[64, 64]))
    for legacy in (False, True):
        path = tmp_path / f"real_{legacy}.pth"
        torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
        check_load_budget(path)  # a real checkpoint, both formats
    with pytest.raises(LoadBudgetError, match="would unpack 3,221,22"):
        check_load_budget(zip_bomb(tmp_path / "bomb.pth"))
    with pytest.raises(LoadBudgetError, match="would unpack 1,073,74"):
        check_load_budget(legacy_bomb(tmp_path / "legacy.pth"))


# ------------------------------------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_files")
    data = tiny_voc(root / "data", train=2, val=1)
    made = {"zip_bomb": zip_bomb(root / "bomb.pth"), "legacy_bomb": legacy_bomb(root / "legacy.pth"),
            "300k_classes": stored_config(root / "classes.pth", classes=[f"c{i}" for i in range(300_000)]),
            "1MB_name": stored_config(root / "name.pth", classes=["x" * 2**20]),
            "nan_anchors": stored_config(root / "nan.pth", anchors=[[float("nan"), 14.0]] * 6),
            "negative_anchors": stored_config(root / "neg.pth", anchors=[[-10.0, 14.0]] * 6)}
    onnx_folder = root / "onnx"
    onnx_folder.mkdir()
    made.update(onnx_files(onnx_folder))
    return root, data, made


# (file, command, what the one error line must hold)
CASES = [
    ("zip_bomb", "predict.py", ["bomb.pth", "would unpack 3,221,"]),
    ("zip_bomb", "eval.py", ["bomb.pth", "would unpack"]),
    ("zip_bomb", "train.py", ["bomb.pth", "would unpack"]),
    ("legacy_bomb", "predict.py", ["legacy.pth", "would unpack 1,073,"]),
    ("300k_classes", "predict.py", ["300000 classes", "at most 10000"]),
    ("1MB_name", "eval.py", ["class name", "characters): give 1 to 200"]),
    ("nan_anchors", "predict.py", ["anchors", "finite number"]),
    ("negative_anchors", "eval.py", ["anchors", "finite number"]),
    ("external", "predict.py", ["external.onnx", "not a file inside the model's folder"]),
    ("truncated", "eval.py", ["truncated.onnx", "not a readable ONNX"]),
    ("opset99", "predict.py", ["opset99.onnx", "opset 99"]),
    ("no_metadata", "eval.py", ["no_metadata.onnx", "no 'model_config' metadata"]),
]


@pytest.mark.slow
def test_hostile_model_files_are_one_line_with_bounded_memory(files, tmp_path):
    root, data, made = files
    image = data / "VOC2007" / "JPEGImages"
    logs = tmp_path / "logs"
    extra = {"predict.py": ["--source", image, "--device", "cpu"],
             "eval.py": ["--data", data, "--device", "cpu", "--workers", "0"],
             "train.py": ["--data", data, "--epochs", "1", *TRAIN_FAST]}
    jobs = [(script, ["--weights", made[name], "--save-dir", logs, *extra[script]]) for name, script, _ in CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: run_measured(job[0], *job[1]), jobs))
    failures, peak = [], 0
    for (name, script, words), (code, output, rss) in zip(CASES, results, strict=True):
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        peak = max(peak, rss)
        if (code != 1 or len(errors) != 1 or not all(w in errors[0] for w in words) or "Traceback" in output
                or rss > RSS_LIMIT or max(map(len, output.splitlines()), default=0) > 2000):
            failures.append(f"{name} via {script}: exit {code}, peak RSS {rss / 2**20:.0f} MiB\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)
    written = sorted(p.name for p in logs.rglob("*") if p.is_file()) if logs.exists() else []
    assert set(written) <= {"train.log", "args.yaml"}, written  # a failed training run keeps its log, nothing else
    print("model files:", json.dumps({"injected": len(CASES), "survived": len(CASES), "lost": 0,
                                      "peak_rss_mib": round(peak / 2**20)}))


ESCAPES = ["cat\x1b[2J\x1b]0;pwned\x07", "dog\u202eevil", "bird"]  # clear screen + window title; a bidi override


def confident_cat(classes: list[str]) -> tuple[torch.nn.Module, ModelConfig]:
    """Random weights whose head biases make anchor 0 of every cell a confident class 0 (so it is printed)."""
    torch.manual_seed(0)
    config = ModelConfig(classes=classes, input_shape=[64, 64])
    model = build_model(config).eval()
    with torch.no_grad():
        for head in model.head_output_convs():
            head.weight.mul_(0.01)
            bias = head.bias.view(3, 5 + len(classes))
            bias[:, 4] = -8.0
            bias[0, 4] = bias[0, 5] = 6.0
    return model, config


@pytest.mark.slow
def test_names_with_escape_sequences_print_escaped_and_cut(tmp_path):
    """Class names from a checkpoint (predict.py's counts) and from annotations (eval.py's warnings about an unknown
    class of 100,000 characters) reach the output escaped and cut: no ESC or bidi character, no endless line."""
    model, config = confident_cat(ESCAPES)
    weights = write_weights(tmp_path / "escapes.pth", model.state_dict(), config)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = tiny_voc(tmp_path / "data", train=2, val=1)
    annotation = sorted((data / "VOC2007" / "Annotations").glob("*.xml"))[-1]  # the val split's image
    long_name = "\u202e" + "n" * 100_000
    annotation.write_text(annotation.read_text(encoding="utf-8").replace("<name>", f"<name>{long_name}", 1),
                          encoding="utf-8")
    plain_model, plain_config = confident_cat(["circle", "square", "triangle"])
    plain = write_weights(tmp_path / "plain.pth", plain_model.state_dict(), plain_config)
    with ThreadPoolExecutor(max_workers=2) as pool:
        predicted, evaluated = pool.map(lambda job: run_measured(*job), [
            ("predict.py", "--weights", weights, "--source", images, "--save-dir", tmp_path / "p", "--device", "cpu"),
            ("eval.py", "--weights", plain, "--data", data, "--split", "val", "--save-dir", tmp_path / "e",
             "--device", "cpu", "--workers", "0")])
    for code, output, _ in (predicted, evaluated):
        assert code == 0, output[-3000:]
        assert "\x1b" not in output and "\u202e" not in output and "\x07" not in output
        assert max(map(len, output.splitlines())) < 5000  # the 100,000-character name was cut
    assert "cat\\x1b[2J\\x1b]0;pwned\\x07" in predicted[1]
    assert "\\u202en" in evaluated[1] and "characters)" in evaluated[1]
    print("names:", json.dumps({"injected": 3, "survived": 3, "raw_escape_bytes_printed": 0}))
