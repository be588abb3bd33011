"""Peak memory of train.py, eval.py and predict.py on decompression bombs: PNGs of a few hundred KB that declare
40000x40000 and 30000x30000 pixels (1-bit grey, all zero: zlib squeezes each 200 MB of pixel rows ~1000:1).

Each tool runs as its own subprocess on a tiny VOC dataset (or --source) holding one bomb among normal images; the
child's peak resident memory comes from os.wait4's rusage. Prints one JSON line per (tool, bomb): exit code, peak RSS
in MiB, seconds, whether a Python traceback was printed, and the last output line.
Usage: python benchmarks/bench_bombs.py [--root REPO] [--sizes 40000 30000] [--tools train eval predict]
(--root runs the tools of another checkout, e.g. `git archive <commit>` unpacked, to measure before/after.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_bombs.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import run_with_peak_rss  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402

SAMPLE = ROOT / "VOCdevkit" / "VOC2007"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, width: int, height: int) -> int:
    """A valid 1-bit greyscale PNG of width x height black pixels, compressed row by row; returns its size in bytes."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = bytearray()
    for _ in range(height):
        body += compressor.compress(row)
    body += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", bytes(body)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return len(data)


def tiny_voc_with_bomb(dest: Path, bomb: Path, images: int = 6) -> Path:
    """A VOC2007 folder of `images` sample images whose first image is replaced by the bomb (same stem, .png);
    every split file lists every id, so each tool meets the bomb."""
    ids = sorted(p.stem for p in (SAMPLE / "Annotations").glob("*.xml"))[:images]
    year = dest / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for stem in ids:
        shutil.copy(SAMPLE / "Annotations" / f"{stem}.xml", year / "Annotations")
        shutil.copy(SAMPLE / "JPEGImages" / f"{stem}.jpg", year / "JPEGImages")
    (year / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    shutil.copy(bomb, year / "JPEGImages" / f"{ids[0]}.png")
    for split in ("train", "val", "test"):
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return dest


def run_measured(command: list[str], cwd: Path, timeout: float) -> dict:
    """Run `command`; exit code, its own peak RSS (MiB), seconds, traceback seen, last output line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as out:
        measured = run_with_peak_rss(command, cwd=cwd, env=env, stdout=out, timeout=timeout)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return {"exit": measured.exit_code, "peak_rss_mib": round(measured.peak_rss_bytes / 2**20, 1),
            "seconds": round(measured.seconds, 1), "traceback": "Traceback" in text,
            "last_line": lines[-1][-200:] if lines else ""}


def commands(tool: str, root: Path, data: Path, bomb: Path, weights: Path, names: Path, logs: Path) -> list[str]:
    python = sys.executable
    if tool == "train":
        return [python, str(root / "train.py"), "--data", str(data), "--epochs", "1", "--input-shape", "64",
                "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-preview", "--no-amp",
                "--mosaic", "0", "--mixup", "0", "--save-dir", str(logs), "--name", "train"]
    if tool == "eval":
        return [python, str(root / "eval.py"), "--weights", str(weights), "--names", str(names), "--phi", "0",
                "--data", str(data), "--split", "test", "--device", "cpu", "--workers", "0", "--no-amp",
                "--save-dir", str(logs / "eval")]
    return [python, str(root / "predict.py"), "--weights", str(weights), "--names", str(names), "--phi", "0",
            "--source", str(bomb.parent), "--device", "cpu", "--save-dir", str(logs / "predict")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose train/eval/predict.py to run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[40000, 30000], help="bomb side lengths (px)")
    parser.add_argument("--tools", nargs="+", default=["train", "eval", "predict"],
                        choices=("train", "eval", "predict"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run before it is killed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        names, weights = tmp / "names.txt", tmp / "model.pth"
        names.write_text("raccoon\n", encoding="utf-8")
        torch.save(build_model(ModelConfig(classes=["raccoon"], input_shape=(64, 64))).state_dict(), weights)
        for size in args.sizes:
            pictures = tmp / f"pictures{size}"
            pictures.mkdir()
            bomb = pictures / f"bomb_{size}.png"
            bomb_bytes = write_png_bomb(bomb, size, size)
            shutil.copy(SAMPLE / "JPEGImages" / "000002.jpg", pictures / "normal.jpg")
            data = tiny_voc_with_bomb(tmp / f"data{size}", bomb)
            for tool in args.tools:
                logs = tmp / f"logs_{tool}_{size}"
                result = run_measured(commands(tool, args.root.resolve(), data, bomb, weights, names, logs),
                                      args.root.resolve(), args.timeout)
                print(json.dumps({"tool": tool, "bomb": f"{size}x{size}", "bomb_kib": bomb_bytes // 1024,
                                  "root": str(args.root), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
