"""Training/evaluation datasets, collate functions and the DataLoader factory.

Images stay RGB uint8 until batching; the model divides by 255. Targets are float32 (class, x1, y1, x2, y2) in input
pixels. Workers are seeded from (seed, rank) through the loader's generator plus their worker id, so no two workers
draw the same augmentation; with persistent workers their random streams simply continue, so every epoch differs.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from utils.common.boxes import LetterboxInfo, letterbox
from utils.common.errors import ConfigError, DatasetError, UserError
from utils.common.image_io import ImageReadError, read_image, write_image
from utils.common.visualize import draw_detections, image_grid
from utils.data.augment import AugmentConfig, Sample, colour_jitter, mixup, mosaic, random_placement
from utils.data.index import DatasetIndex

LOGGER = logging.getLogger(__name__)
MAX_REPLACEMENTS = 20  # a training sample tries this many other images before giving up on a broken dataset


class CacheTooLargeError(UserError, RuntimeError):
    """--cache ram would not fit into the available memory."""


def _reduce_factor(height: int, width: int, target: int) -> int:
    """Largest JPEG reduced-decode factor that still yields a longer side >= target (never decode below target)."""
    longer = max(height, width)
    for factor in (8, 4, 2):
        if longer >= factor * target:
            return factor
    return 1


def load_resized(path: Path, height: int, width: int, target: int) -> np.ndarray:
    """Decode an image and resize it so its longer side is `target` px (RGB uint8). Raises ImageReadError."""
    image = read_image(path, reduce=_reduce_factor(height, width, target))
    scale = target / max(image.shape[:2])
    if scale != 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        # the reduced decode already shrank by 2^k, so what is left is a factor >= 0.5 that bilinear handles
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image


def cached_shape(height: int, width: int, target: int) -> tuple[int, int]:
    scale = target / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable from /proc/meminfo, else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_cache_fits(index: DatasetIndex, target: int, available: int | None = None) -> int:
    """Bytes that --cache ram needs for `index` at longer side `target`; raises CacheTooLargeError if they don't fit
    in 90% of the available memory (the rest is left for the model, workers and the OS)."""
    needed = sum(math.prod(cached_shape(r.height, r.width, target)) * 3 for r in index.records)
    available = available_memory() if available is None else available
    if needed > 0.9 * available:
        raise CacheTooLargeError(
            f"--cache ram needs about {needed / 2**30:.2f} GiB for {len(index)} images at {target} px but only "
            f"{available / 2**30:.2f} GiB of memory is available; train without --cache or free memory")
    return needed


class TrainDataset(Dataset):
    """Augmented training samples: (image uint8 Tensor[3, H, W] RGB, targets float32 Tensor[N, 5]
    (class, x1, y1, x2, y2) input pixels). Mosaic and mixup stop once `set_epoch` passes
    augment.mosaic_epochs_fraction of `epochs`; the epoch lives in shared memory so persistent workers see it."""

    def __init__(self, index: DatasetIndex, input_shape: tuple[int, int] | list[int],
                 augment: AugmentConfig | None = None, epochs: int = 1, cache: str | None = None) -> None:
        if cache not in (None, "none", "ram"):
            raise ConfigError(f"unknown cache mode {cache!r}; use 'ram' or leave it off")
        self.index = index
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.augment = augment or AugmentConfig()
        self.epochs = max(int(epochs), 1)
        self._epoch = mp.Value("i", 0)  # shared with (persistent) DataLoader workers
        self._target = max(self.input_shape)
        self._colour = colour_jitter(self.augment)
        self._recent: dict[int, np.ndarray] = {}  # per-worker buffer of recently decoded images (mosaic partners)
        self._reported: set[Path] = set()
        self._cache = self._fill_cache() if cache == "ram" else None
        self.reseed(0)

    def __len__(self) -> int:
        return len(self.index.records)

    def reseed(self, seed: int) -> None:
        """Seed this copy's numpy generator and the albumentations transform (called in each worker)."""
        self.rng = np.random.default_rng(seed)
        if self._colour is not None:
            self._colour.set_random_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        with self._epoch.get_lock():
            self._epoch.value = int(epoch)

    @property
    def mosaic_active(self) -> bool:
        return self._epoch.value < self.augment.mosaic_epochs_fraction * self.epochs

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, boxes, labels = self.sample(i)
        targets = np.concatenate([labels[:, None].astype(np.float32), boxes.astype(np.float32)], axis=1)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(targets)

    def sample(self, i: int) -> Sample:
        """(image RGB uint8 (H, W, 3), boxes float32 [N, 4] input px, labels int64 [N]) of one augmented sample."""
        config, rng = self.augment, self.rng
        if self.mosaic_active and config.mosaic > 0 and rng.random() < config.mosaic:
            tiles = [self._load(i)] + [self._load(j) for j in self._partners(3)]
            result = mosaic(tiles, self.input_shape, config, rng)
            if config.mixup > 0 and rng.random() < config.mixup:
                other = random_placement(self._load(self._partners(1)[0]), self.input_shape, config, rng)
                result = mixup(result, other)
        else:
            result = random_placement(self._load(i), self.input_shape, config, rng)
        if self._colour is not None:
            result = (self._colour(image=result[0])["image"], result[1], result[2])
        return result

    def _partners(self, count: int) -> list[int]:
        """Indices of mosaic/mixup partners: from the recent-image buffer once it is full (saves decoding, as
        ultralytics' mosaic buffer does), otherwise anywhere in the dataset."""
        size = min(self.augment.mosaic_buffer, len(self))
        if self._cache is None and size > 0 and len(self._recent) >= size:
            keys = list(self._recent)
            return [keys[k] for k in self.rng.integers(len(keys), size=count)]
        return self.rng.integers(len(self), size=count).tolist()

    def _load(self, i: int) -> Sample:
        """Image (longer side = input size) with its training boxes scaled to it; broken images are logged once and
        replaced by another random image."""
        for _ in range(MAX_REPLACEMENTS):
            try:
                image = self._image(i)
                break
            except ImageReadError as err:
                record = self.index.records[i]
                if record.path not in self._reported:
                    self._reported.add(record.path)
                    LOGGER.warning("%s (using another image in its place)", err)
                i = int(self.rng.integers(len(self)))
        else:
            raise DatasetError(f"{MAX_REPLACEMENTS} images in a row could not be read; check the dataset "
                               f"({self.index.records[i].path.parent})")
        boxes, labels = self.index.training_targets(i)
        record = self.index.records[i]
        scale = np.array([image.shape[1] / record.width, image.shape[0] / record.height] * 2, dtype=np.float32)
        return image, boxes * scale, labels

    def _image(self, i: int) -> np.ndarray:
        if self._cache is not None:
            if self._cache[i] is None:
                raise ImageReadError(f"{self.index.records[i].path}: could not be read when caching")
            return self._cache[i]
        if i in self._recent:
            return self._recent[i]
        record = self.index.records[i]
        image = load_resized(record.path, record.height, record.width, self._target)
        if self.augment.mosaic_buffer > 0:
            self._recent[i] = image
            while len(self._recent) > self.augment.mosaic_buffer:
                self._recent.pop(next(iter(self._recent)))  # dicts keep insertion order: drop the oldest
        return image

    def _fill_cache(self) -> list[np.ndarray | None]:
        needed = check_cache_fits(self.index, self._target)
        LOGGER.info("caching %d images in RAM (%.2f GiB)", len(self), needed / 2**30)

        def load(record):
            try:
                return load_resized(record.path, record.height, record.width, self._target)
            except ImageReadError as err:
                LOGGER.warning("%s (not cached; another image is used in its place)", err)
                return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
            return list(pool.map(load, self.index.records))


class EvalDataset(Dataset):
    """Letterboxed images for validation/test: (image uint8 Tensor[3, H, W], index, LetterboxInfo).

    An image that cannot be read (known from indexing, `ImageRecord.image_error`, or failing only now) yields a
    zero tensor and its error message in place of the LetterboxInfo: evaluation shows it to no model, so its
    objects count as missed. A partly decoded (truncated) image is used as decoded; indexing reported it."""

    def __init__(self, index: DatasetIndex, input_shape: tuple[int, int] | list[int]) -> None:
        self.index = index
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))

    def __len__(self) -> int:
        return len(self.index.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, LetterboxInfo | str]:
        record = self.index.records[i]
        error = record.image_error
        if error is None:
            try:
                image = read_image(record.path)
            except ImageReadError as err:
                error = str(err)
            else:
                canvas, info = letterbox(image, self.input_shape)
                return torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))), i, info
        return torch.zeros((3, *self.input_shape), dtype=torch.uint8), i, error


def train_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (images uint8 [B, 3, H, W], targets float32 [M, 6] (batch_idx, class, x1, y1, x2, y2))."""
    images = torch.stack([item[0] for item in batch])
    targets = [torch.cat([torch.full((len(t), 1), float(b)), t], dim=1) for b, (_, t) in enumerate(batch)]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def eval_collate(batch: list[tuple[torch.Tensor, int, LetterboxInfo | str]]
                 ) -> tuple[torch.Tensor, list[int], list[LetterboxInfo | str]]:
    """-> (images uint8 [B, 3, H, W], dataset indices, letterbox infos or the errors of unreadable images)."""
    return torch.stack([item[0] for item in batch]), [item[1] for item in batch], [item[2] for item in batch]


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy, random, torch and the dataset's own generators from the worker's torch seed,
    which the DataLoader derives from its generator (seeded from seed and rank) plus the worker id."""
    info = get_worker_info()
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    cv2.setNumThreads(0)  # workers are the parallelism; OpenCV's own threads would oversubscribe the cores
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def build_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, collate_fn=None) -> DataLoader:
    """DataLoader with per-worker seeds, persistent workers, pin_memory on CUDA, and a DistributedSampler when
    world_size > 1 (the caller calls loader.sampler.set_epoch(epoch) each epoch)."""
    if collate_fn is None:
        collate_fn = train_collate if isinstance(dataset, TrainDataset) else eval_collate
    stream_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])  # distinct per (seed, rank)
    generator = torch.Generator()
    generator.manual_seed(stream_seed)
    if workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(stream_seed)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      drop_last=drop_last, persistent_workers=workers > 0, worker_init_fn=seed_worker,
                      generator=generator)


def save_preview(dataset: TrainDataset, path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write a PNG grid of `n` augmented training samples with their boxes drawn (what the model sees)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    saved = dataset.rng
    dataset.rng = np.random.default_rng(seed)
    try:
        tiles = []
        for i in rng.choice(len(dataset), size=n, replace=len(dataset) < n):
            image, boxes, labels = dataset.sample(int(i))
            tiles.append(draw_detections(image, boxes, labels, dataset.index.classes))
    finally:
        dataset.rng = saved
    grid = image_grid(tiles, columns=math.ceil(math.sqrt(n)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, grid)
    return path


class MultiScale:
    """Multi-scale training (Darknet's random=1, Ultralytics' --multi-scale): each batch is resized to one size drawn
    from `low`..`high` x the input shape, in steps of the model's largest stride (so every head's grid stays whole).

    It works on the batch already on the training device (bilinear on the float input), so data loading is
    unchanged; targets (input pixels) are scaled with the images. Anchors are in input pixels and the loss reads
    the input size from the head shapes, so both stay right at every size. The draw is seeded (seed, epoch)."""

    def __init__(self, input_shape: list[int], stride: int, low: float = 0.5, high: float = 1.5, seed: int = 0):
        if not 0 < low <= high:
            raise ConfigError(f"--multi-scale-range {low},{high}: give 0 < low <= high, e.g. 0.5,1.5")
        height, width = input_shape
        self.shapes = []
        for h in range(stride, int(height * high) + 1, stride):
            if h >= height * low:
                w = max(stride, round(h * width / height / stride) * stride)
                self.shapes.append((h, w))
        if not self.shapes:
            raise ConfigError(f"--multi-scale-range {low},{high} holds no multiple of {stride} around {input_shape}")
        self.seed = seed
        self.generator = torch.Generator()

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def draw(self) -> tuple[int, int]:
        return self.shapes[int(torch.randint(len(self.shapes), (1,), generator=self.generator))]

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize a float [B, 3, H, W] batch and its targets [M, 6] (.., x1, y1, x2, y2) to a drawn size."""
        height, width = self.draw()
        if (height, width) == tuple(images.shape[2:]):
            return images, targets
        scale_y, scale_x = height / images.shape[2], width / images.shape[3]
        images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        targets = targets.clone()
        targets[:, [2, 4]] *= scale_x
        targets[:, [3, 5]] *= scale_y
        return images.contiguous(memory_format=torch.channels_last), targets
