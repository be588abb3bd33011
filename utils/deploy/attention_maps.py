"""What the attention blocks look at: `predict.py --attention-maps` writes, per image, `<stem>_attention.jpg`.

One picture holds tiles of equal size: the detections, the objectness heat map (as --heatmap draws it) and, per
attention block, its map upsampled over the image: CBAM's spatial gate, coordinate attention's height x width gate
product (mean over channels), and for the channel-only blocks (SE, ECA) the channel-weighted activation energy
mean_c (w_c x_c)^2. Each map is stretched to its own min..max for display; the caption gives that range. The layout
depends only on the image size and the blocks, so the pictures of two checkpoints can be put side by side.

Maps come from forward hooks on the blocks of a plain fp32 copy of the model; the fast Detector is not touched.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nets.attention import AttentionBlock
from utils.common.errors import ConfigError
from utils.common.image_io import write_image
from utils.common.visualize import FONT, draw_detections, image_grid
from utils.deploy.sources import ImageSource, SourceError
from utils.runtime.detector import BaseDetector, Detector, objectness_map, overlay_heatmap

LOGGER = logging.getLogger(__name__)
TILE_SIDE = 360  # the longer side of each tile, in pixels
CAPTION_LINE = 16  # pixels per caption line; captions have two lines
COLUMNS = 4


class AttentionRecorder:
    """Forward hooks on every attention block of `model`: after a forward pass, `maps[name]` is that block's map
    (AttentionBlock.attention_map of its input), float32 [B, h, w] on the CPU. Use as a context manager."""

    def __init__(self, model: nn.Module):
        self.blocks: dict[str, AttentionBlock] = model.attention_blocks() if hasattr(model, "attention_blocks") else {}
        self.maps: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> "AttentionRecorder":
        self.maps.clear()
        self._handles = [block.register_forward_hook(self._hook(name)) for name, block in self.blocks.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def record(module: AttentionBlock, inputs: tuple, output: torch.Tensor) -> None:
            self.maps[name] = module.attention_map(inputs[0]).detach().float().cpu()
        return record


def attention_detector(detector: BaseDetector) -> Detector:
    """A plain fp32 Detector on a copy of `detector`'s PyTorch model (same options), for hooking."""
    model = getattr(detector, "model", None)
    if model is None:
        raise ConfigError("--attention-maps needs PyTorch weights (.pth or Darknet); an exported .onnx file has no "
                         "attention blocks to look into")
    model = getattr(model, "_orig_mod", model)  # under torch.compile, hooks belong on the original module
    return Detector(copy.deepcopy(model), detector.config, detector.device, detector.options, detector.input_shape,
                    optimize=False, precision="fp32")


def tile_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of every tile for this image: its aspect ratio, longer side TILE_SIDE."""
    height, width = image.shape[:2]
    scale = TILE_SIDE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def captioned(image: np.ndarray, lines: tuple[str, str], size: tuple[int, int]) -> np.ndarray:
    """`image` resized to `size` under a dark two-line caption strip."""
    tile = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    strip = np.full((2 * CAPTION_LINE, size[0], 3), 32, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, (i + 1) * CAPTION_LINE - 4), FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def block_label(name: str) -> str:
    """'backbone.resblock_body2.feat_att' -> 'backbone stage 2'; 'feat1_att' -> 'neck feat1_att'."""
    if name.startswith("backbone.resblock_body"):
        return f"backbone stage {name.split('.')[1].removeprefix('resblock_body')}"
    return f"neck {name}"


def map_overlay(image: np.ndarray, attention_map: torch.Tensor, canvas_shape: tuple[int, int], info
                ) -> tuple[np.ndarray, float, float]:
    """A block's map [h, w] over the canvas, cropped to the image and blended onto it; with its raw min and max."""
    values = attention_map.numpy().astype(np.float32)
    low, high = float(values.min()), float(values.max())
    spread = high - low
    scaled = (values - low) / spread if spread > 1e-12 else np.zeros_like(values)
    heat = cv2.resize(scaled, (canvas_shape[1], canvas_shape[0]), interpolation=cv2.INTER_LINEAR)
    return overlay_heatmap(image, heat, info), low, high


def attention_picture(detector: Detector, recorder: AttentionRecorder, image: np.ndarray) -> np.ndarray:
    """The tiled picture for one RGB image (see the module docstring)."""
    prepared = detector.prepare(image)
    with recorder:
        results, decoded = detector.detect_prepared([prepared])
    dets, size = results[0], tile_size(image)
    names = detector.config.classes
    heat = objectness_map(decoded[0], detector.config, detector.input_shape)
    tiles = [captioned(draw_detections(image, dets[:, :4], dets[:, 5], names, dets[:, 4]),
                       ("detections", f"{len(dets)} at score >= {detector.options.conf_thres:g}"), size),
             captioned(overlay_heatmap(image, heat, prepared.info), ("objectness", "max over anchors and heads"), size)]
    for name, block in recorder.blocks.items():
        attention_map = recorder.maps[name][0]
        overlay, low, high = map_overlay(image, attention_map, detector.input_shape, prepared.info)
        h, w = attention_map.shape
        tiles.append(captioned(overlay, (f"{block_label(name)} ({h}x{w})", f"{block.map_kind} {low:.3f}..{high:.3f}"),
                               size))
    return image_grid(tiles, columns=min(COLUMNS, len(tiles)))


def write_attention_maps(plain: Detector, source, save_dir: Path) -> list[Path]:
    """`<stem>_attention.jpg` in `save_dir` for every image of `source`, with `plain` (see attention_detector);
    returns the paths written."""
    if not isinstance(source, ImageSource):
        raise SourceError("--attention-maps draws one picture per image: give an image, a folder or a glob, not a "
                          "video or a webcam")
    recorder = AttentionRecorder(plain.model)
    if not recorder.blocks:
        LOGGER.info("the model has no attention blocks (attention none): the pictures show detections and objectness")
    save_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame in tqdm(source, total=source.length, desc="attention maps", unit="img", leave=False,
                      disable=source.length == 1):
        path = save_dir / f"{Path(frame.name).stem}_attention.jpg"
        write_image(path, attention_picture(plain, recorder, frame.image))
        written.append(path)
    LOGGER.info("attention maps: %d picture(s) in %s (<image>_attention.jpg)", len(written), save_dir)
    return written
