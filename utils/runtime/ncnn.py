"""Run an NCNN export (best.ncnn.param + best.ncnn.bin, made by pnnx; config in best.ncnn.json beside them).

The NCNN graph is the fused network without the decoding (NCNN has no batch axis and pnnx does not convert the grid
arithmetic); its two head outputs are decoded here by decode_outputs, as PyTorch does, one image per extraction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from utils.runtime.detector import DetectOptions
from utils.runtime.exported import ExportError, RawOutputDetector, check_fixed_shape, read_side_config, require

FIX = "export it again with predict.py --export ncnn"


class NcnnDetector(RawOutputDetector):
    """The Detector interface over an NCNN .param/.bin pair, run on the CPU (no Vulkan)."""

    def __init__(self, path: str | Path, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None):
        path = Path(path)
        ncnn = require("ncnn", f"running {path.name}", "ncnn")
        config = read_side_config(path, FIX)
        check_fixed_shape(path, config, input_shape)
        super().__init__(config, options)
        self.ncnn = ncnn
        self.net = self._load(path)
        self.input_name = self.net.input_names()[0]
        self.output_names = list(self.net.output_names())
        if len(self.output_names) != len(config.anchors_mask):
            raise ExportError(f"{path} has {len(self.output_names)} outputs, its model config "
                              f"{len(config.anchors_mask)} heads; {FIX}")

    def _load(self, path: Path):
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise ExportError(f"{path} has no {weights.name} beside it (the weights); {FIX}")
        net = self.ncnn.Net()
        net.opt.use_vulkan_compute = False
        # fp32 all the way, so that the model that runs is the one that was scored: ncnn's default fp16 storage and
        # arithmetic (used where the CPU has them) moved boxes by 0.1 px on real images and 3 px on noise here
        net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
        # ncnn returns non-zero, with no exception, for a param file it cannot parse or a .bin that ends early
        if net.load_param(str(path)) != 0 or not net.input_names():
            raise ExportError(f"{path} is not a readable NCNN param file (truncated?); {FIX}")
        if net.load_model(str(weights)) != 0:
            raise ExportError(f"{weights} does not hold the weights {path.name} declares (truncated?); {FIX}")
        return net

    def raw_outputs(self, images: np.ndarray) -> list[np.ndarray]:
        per_image = [self._extract(image) for image in images]
        return [np.stack([outputs[k] for outputs in per_image]) for k in range(len(self.output_names))]

    def _extract(self, image: np.ndarray) -> list[np.ndarray]:
        """float32 [3, H, W] -> the head outputs [C, H / s, W / s] of one image."""
        extractor = self.net.create_extractor()
        extractor.input(self.input_name, self.ncnn.Mat(np.ascontiguousarray(image)).clone())
        outputs = []
        for name in self.output_names:
            status, mat = extractor.extract(name)
            if status != 0:
                raise ExportError(f"NCNN could not compute output {name} (status {status}); {FIX}")
            outputs.append(np.array(mat))
        return outputs
