"""Fast batched inference: letterbox -> one forward for N images -> decode -> NMS -> boxes in original pixels.

`Detector` wraps a PyTorch model (optionally Conv+BN fused, channels_last, autocast);
`utils.runtime.onnx.OnnxDetector`
wraps an ONNX file. Both take RGB uint8 images (H, W, 3) and return one float32 ndarray[K, 6]
(x1, y1, x2, y2, score, class) per image, in original-image pixels, and both keep per-stage timings.
`Detector.stream` overlaps image decoding and letterboxing (a background thread) with the forward pass.
"""
from __future__ import annotations

import copy
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nets.backbone import BasicConv
from utils.common.boxes import LetterboxInfo, detections_to_original, letterbox
from utils.common.device import autocast, resolve_precision, select_device
from utils.common.image_io import to_model_input
from utils.model.config import ModelConfig
from utils.model.decode import decode_outputs, non_max_suppression

LOGGER = logging.getLogger(__name__)


@dataclass
class DetectOptions:
    """Post-processing thresholds: score = objectness x class probability >= conf_thres, NMS at iou_thres."""

    conf_thres: float = 0.5
    iou_thres: float = 0.3
    max_det: int = 300
    agnostic: bool = False
    classes: list[int] | None = None  # keep only these class indices


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over `images`; `wall` is the end-to-end time inside `Detector.stream`."""

    pre: float = 0.0
    infer: float = 0.0
    nms: float = 0.0
    wall: float = 0.0
    images: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float, images: int = 0) -> None:
        with self._lock:  # pre-processing is timed on the prefetch thread
            setattr(self, stage, getattr(self, stage) + seconds)
            self.images += images

    def summary(self) -> dict[str, float]:
        """Milliseconds per image for each stage, and images/s end to end (wall clock when measured)."""
        n = max(self.images, 1)
        total = self.wall or (self.pre + self.infer + self.nms)
        return {"images": self.images, "pre_ms": 1000 * self.pre / n, "infer_ms": 1000 * self.infer / n,
                "nms_ms": 1000 * self.nms / n, "images_per_s": self.images / total if total else 0.0}


@dataclass
class Prepared:
    """An item ready for the forward pass: the source's item, its letterboxed canvas and how it was placed."""

    item: Any
    canvas: np.ndarray
    info: LetterboxInfo


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of eval-mode `model` with every BasicConv's BatchNorm folded into its convolution (same outputs,
    up to float rounding) and its LeakyReLU made in-place."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, BasicConv) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
            if isinstance(module.activation, nn.LeakyReLU):  # in place on the conv's fresh output: less memory traffic
                module.activation = nn.LeakyReLU(module.activation.negative_slope, inplace=True)
        elif hasattr(module, "fuse_conv_bn_"):  # attention blocks with their own conv + BN (coordinate attention)
            module.fuse_conv_bn_()
    return fused


def batched(iterable: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last may be shorter); itertools.batched needs Python 3.12."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Prefetcher:
    """Iterate `fn(item)` for the items of `iterable`, computed up to `depth` ahead on a background thread.

    cv2 decoding and resizing release the GIL, so this overlaps with the forward pass. Errors raised by the iterable
    or by `fn` are re-raised in the consuming thread, at the position where they happened.
    """

    _DONE, _ERROR, _ITEM = range(3)

    def __init__(self, iterable: Iterable, fn: Callable[[Any], Any], depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iterable, fn), daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, iterable: Iterable, fn: Callable[[Any], Any]) -> None:
        try:
            for item in iterable:
                if not self._put((self._ITEM, fn(item))):
                    return
        except Exception as err:  # any error: handed to the consumer, which re-raises it
            self._put((self._ERROR, err))
            return
        self._put((self._DONE, None))

    def __iter__(self) -> Iterator:
        while True:
            kind, value = self._queue.get()
            if kind == self._DONE:
                return
            if kind == self._ERROR:
                raise value
            yield value

    def close(self) -> None:
        """Stop the worker (e.g. the consumer broke out of the loop) and wait for it."""
        self._stop.set()
        self._thread.join(timeout=5)


class BaseDetector:
    """Shared pre- and post-processing; subclasses implement `forward(batch uint8 [B, H, W, 3]) -> decoded`."""

    def __init__(self, config: ModelConfig, options: DetectOptions | None = None,
                 input_shape: Sequence[int] | None = None):
        self.config = config
        self.options = options or DetectOptions()
        self.input_shape = tuple(int(s) for s in (input_shape or config.input_shape))
        self.times = StageTimes()

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 ndarray[B, H, W, 3] letterboxed canvases -> Tensor[B, N, 5 + nc] (see utils.model.decode)."""
        raise NotImplementedError

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """One untimed forward pass per batch size, so that one-off costs (a runtime's first-call set-up, int8 kernel
        selection, torch.compile) happen before timing or streaming and not in the first image's time."""
        for size in batch_sizes:
            self.forward(np.full((size, *self.input_shape, 3), 114, np.uint8))

    def prepare(self, image: np.ndarray, item: Any = None) -> Prepared:
        """Letterbox one RGB uint8 image onto the model input canvas (timed as pre-processing)."""
        start = time.perf_counter()
        canvas, info = letterbox(image, self.input_shape)
        self.times.add("pre", time.perf_counter() - start)
        return Prepared(item, canvas, info)

    def detect_prepared(self, prepared: Sequence[Prepared]) -> tuple[list[np.ndarray], torch.Tensor]:
        """One forward pass for the whole batch -> (per-image ndarray[K, 6] in original pixels, decoded batch)."""
        start = time.perf_counter()
        batch = np.stack([p.canvas for p in prepared])
        decoded = self.forward(batch)
        middle = time.perf_counter()
        opts = self.options
        kept = non_max_suppression(decoded, opts.conf_thres, opts.iou_thres, opts.max_det, opts.agnostic,
                                   opts.classes)
        results = []
        for dets, p in zip(kept, prepared, strict=True):
            results.append(detections_to_original(dets, p.info))
        self.times.add("infer", middle - start)
        self.times.add("nms", time.perf_counter() - middle, images=len(prepared))
        return results, decoded

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images (any sizes) -> one float32 ndarray[K, 6] (x1, y1, x2, y2, score, class) each."""
        if not len(images):
            return []
        return self.detect_prepared([self.prepare(image) for image in images])[0]

    def stream(self, items: Iterable, batch_size: int = 1, image_of: Callable[[Any], np.ndarray] = lambda x: x,
               prefetch: bool = True) -> Iterator[tuple[list[Prepared], list[np.ndarray], torch.Tensor]]:
        """Detect over `items` in batches; yields (prepared items, detections, decoded batch) per batch.

        `image_of(item)` gives the RGB image of an item (e.g. reads a file); it runs with letterboxing on a background
        thread when `prefetch`, so reading overlaps the forward pass. `times.wall` counts the time spent in here
        (not in the caller's loop body), so images/s is the detector's end-to-end rate.
        """
        def prepare(item: Any) -> Prepared:
            start = time.perf_counter()
            image = image_of(item)
            self.times.add("pre", time.perf_counter() - start)
            return self.prepare(image, item)

        source = Prefetcher(items, prepare, depth=2 * batch_size) if prefetch else map(prepare, items)
        try:
            start = time.perf_counter()
            for chunk in batched(source, batch_size):
                results, decoded = self.detect_prepared(chunk)
                self.times.wall += time.perf_counter() - start
                yield chunk, results, decoded
                start = time.perf_counter()
        finally:
            if isinstance(source, Prefetcher):
                source.close()


class Detector(BaseDetector):
    """PyTorch inference. optimize=True: Conv+BN fused and channels_last; precision: 'auto' (bf16/fp16 on CUDA,
    fp32 elsewhere), 'fp32', 'bf16' or 'fp16' (utils.common.device.resolve_precision; `self.precision` is the
    resolved one). optimize=False, precision='fp32' is the plain fp32 model."""

    def __init__(self, model: nn.Module, config: ModelConfig, device: str | torch.device | None = "cpu",
                 options: DetectOptions | None = None, input_shape: Sequence[int] | None = None,
                 optimize: bool = True, precision: str = "auto", compile: bool = False):
        super().__init__(config, options, input_shape)
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.precision = resolve_precision(self.device, precision)
        self.memory_format = torch.channels_last if optimize else torch.contiguous_format
        model = fuse_conv_bn(model) if optimize else model.eval()
        self.model = model.to(self.device, memory_format=self.memory_format)
        if compile:
            # Inductor with frozen weights: oneDNN weight prepacking and conv+activation fusion. Compiling takes
            # ~30-60 s per batch size on a small CPU; the forward pass alone then runs ~1.7x faster at batch 1 (end to
            # end ~1.1x on 2 cores, where pre-processing competes for them). Each new batch size recompiles.
            self.model = torch.compile(self.model, options={"freezing": True}, dynamic=False)
        LOGGER.debug("Detector: %s, %s, %s", "fused+channels_last" if optimize else "plain",
                     self.precision, self.device)

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1] on this detector's device and memory format."""
        return to_model_input(batch, self.device, self.memory_format)

    @torch.inference_mode()
    def raw_outputs(self, batch: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The model's raw head outputs for a batch of canvases (under the chosen precision)."""
        with autocast(self.device, self.precision):
            return self.model(self.to_tensor(batch))

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> torch.Tensor:
        return decode_outputs(self.raw_outputs(batch), self.config, self.input_shape)


# ------------------------------------------------------------------------------------------------------- heatmaps
def objectness_map(decoded: torch.Tensor, config: ModelConfig, input_shape: Sequence[int]) -> np.ndarray:
    """Objectness of one image's decoded predictions (Tensor[N, 5 + nc]) as float32 [H, W] in [0, 1] over the
    model input canvas: per head the max over its anchors, bilinearly upsampled, then the max over heads."""
    height, width = int(input_shape[0]), int(input_shape[1])
    objectness = decoded[:, 4].float().cpu().numpy()
    heat = np.zeros((height, width), np.float32)
    start = 0
    for mask, stride in zip(config.anchors_mask, config.strides, strict=True):  # decode_outputs' head order
        h, w = height // stride, width // stride
        head = objectness[start:start + len(mask) * h * w].reshape(len(mask), h, w).max(axis=0)
        start += len(mask) * h * w
        heat = np.maximum(heat, cv2.resize(head, (width, height), interpolation=cv2.INTER_LINEAR))
    return heat


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, info: LetterboxInfo, alpha: float = 0.5) -> np.ndarray:
    """Blend a canvas-sized heat map (see objectness_map) onto the original RGB image, padding cropped away."""
    new_h, new_w = max(1, round(info.orig_height * info.scale)), max(1, round(info.orig_width * info.scale))
    pad_x, pad_y = int(info.pad_x), int(info.pad_y)
    crop = heat[pad_y:pad_y + new_h, pad_x:pad_x + new_w]
    crop = cv2.resize(crop, (info.orig_width, info.orig_height), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.clip(crop * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, colored, alpha, 0)
