"""NCNN (.ncnn.param + .ncnn.bin, fp32 weights) through pnnx: the fused network traced by PyTorch, converted by
pnnx's own converter binary; the decoding stays outside (utils.runtime.ncnn decodes as PyTorch does) and the
ModelConfig goes into <name>.ncnn.json beside them (NCNN files have no metadata)."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from utils.deploy.targets.base import ExportRequest, ExportTarget, check_against_pytorch, remove_partial, traced
from utils.runtime.detector import fuse_conv_bn
from utils.runtime.exported import ExportError, config_json, require, side_file

CONVERT_TIMEOUT_S = 600  # pnnx takes seconds for this model; a hung converter must not hang the export


def export(request: ExportRequest) -> list[Path]:
    pnnx = require("pnnx", "--export ncnn", "pnnx")
    require("ncnn", "--export ncnn (the check against PyTorch)", "ncnn")
    param = request.stem.with_name(f"{request.stem.name}.ncnn.param")
    weights, config_path = param.with_suffix(".bin"), side_file(param)
    param.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "model.pt"
            traced(fuse_conv_bn(request.model), request.config).save(str(script))
            run_pnnx(pnnx.EXEC_PATH, script, request.config.input_shape, param, weights)
        config_path.write_text(config_json(request.config), encoding="utf-8")
        if request.check:
            check_against_pytorch(param, request.model, request.config)
    except BaseException:
        remove_partial(param, weights, config_path)
        raise
    return [param, weights, config_path]


def run_pnnx(executable: str, script: Path, input_shape: list[int], param: Path, weights: Path) -> None:
    """pnnx's converter on a TorchScript file: ncnn param/bin at `param`/`weights` in fp32; its other outputs
    (pnnx param, python and onnx files) go into the script's temporary folder."""
    folder = script.parent
    param, weights = param.resolve(), weights.resolve()  # pnnx runs inside the temporary folder
    command = [executable, str(script), f"inputshape=[1,3,{input_shape[0]},{input_shape[1]}]", "fp16=0",
               f"ncnnparam={param}", f"ncnnbin={weights}", f"ncnnpy={folder / 'ncnn.py'}",
               f"pnnxparam={folder / 'pnnx.param'}", f"pnnxbin={folder / 'pnnx.bin'}",
               f"pnnxpy={folder / 'pnnx.py'}", f"pnnxonnx={folder / 'pnnx.onnx'}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, cwd=folder)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish converting within {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ExportError(f"pnnx could not convert the model to NCNN (exit {done.returncode}): {tail}")


TARGET = ExportTarget(export, "NCNN (via pnnx), run by ncnn on the CPU (phones, edge boxes)")
