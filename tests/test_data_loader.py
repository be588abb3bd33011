"""utils.data.loader: worker seeding, set_epoch through persistent workers, collate formats, cache, broken images,
preview."""
from __future__ import annotations

import logging
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from tests.synthetic import coloured_index
from utils.data.augment import AugmentConfig
from utils.data.loader import (
    CacheTooLargeError,
    EvalDataset,
    TrainDataset,
    build_loader,
    check_cache_fits,
    eval_collate,
    save_preview,
    train_collate,
)


def _duplicated(index, copies: int):
    """An index whose records are all the same image, so any difference between samples is augmentation."""
    return replace(index, records=[index.records[0]] * copies)


def test_workers_draw_different_augmentations(tmp_path):
    index = _duplicated(coloured_index(tmp_path, count=1), 4)
    dataset = TrainDataset(index, (128, 128), AugmentConfig(mosaic=0.0), epochs=1)

    def first_two(seed):
        loader = build_loader(dataset, batch_size=1, workers=2, shuffle=False, seed=seed)
        batches = [images for images, _ in loader]  # sample 0 from worker 0, sample 1 from worker 1
        return batches[0], batches[1]

    a0, a1 = first_two(0)
    assert not torch.equal(a0, a1)  # workers seeded alike would produce identical samples here
    b0, b1 = first_two(0)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)  # reproducible from the seed
    c0, _ = first_two(1)
    assert not torch.equal(a0, c0)


def test_set_epoch_reaches_persistent_workers(tmp_path):
    """Mosaic (several boxes per sample) stops after 70% of the epochs even though the workers persist."""
    index = coloured_index(tmp_path, count=4)
    config = AugmentConfig(mosaic=1.0, mixup=0.0, scale=(1.0, 1.0), mosaic_scale=(1.0, 1.0), jitter=0.0)
    dataset = TrainDataset(index, (128, 128), config, epochs=10)
    loader = build_loader(dataset, batch_size=4, workers=1, shuffle=False, seed=0)
    assert loader.persistent_workers
    boxes_per_sample = {}
    for epoch in (0, 6, 7, 9):
        dataset.set_epoch(epoch)
        _, targets = next(iter(loader))
        boxes_per_sample[epoch] = torch.bincount(targets[:, 0].long(), minlength=4).max().item()
    assert boxes_per_sample[0] > 2 and boxes_per_sample[6] > 2  # mosaic: up to 6 objects from 4 images
    assert boxes_per_sample[7] <= 2 and boxes_per_sample[9] <= 2  # single images hold at most 2 objects


def test_collate_formats(tmp_path):
    index = coloured_index(tmp_path, count=3)
    train = TrainDataset(index, (96, 128), AugmentConfig(), epochs=1)
    images, targets = train_collate([train[0], train[1], train[2]])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 96, 128)
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2}
    images, indices, infos = eval_collate([EvalDataset(index, (96, 128))[i] for i in (2, 0)])
    assert images.shape == (2, 3, 96, 128) and indices == [2, 0] and infos[1].orig_width == index.records[0].width
    loader = build_loader(EvalDataset(index, (96, 128)), batch_size=2, workers=0, shuffle=False, seed=0)
    assert [batch[1] for batch in loader] == [[0, 1], [2]]


def test_cache_ram_refuses_when_too_big_and_works_otherwise(tmp_path):
    index = coloured_index(tmp_path, count=3)
    with pytest.raises(CacheTooLargeError, match=r"--cache ram needs about .* GiB for 3 images at 416 px but only"):
        check_cache_fits(index, 416, available=100_000)
    needed = check_cache_fits(index, 416, available=10 * 2**30)
    assert needed == sum(np.prod([round(r.height * 416 / max(r.height, r.width)),
                                  round(r.width * 416 / max(r.height, r.width))]) * 3 for r in index.records)
    cached = TrainDataset(index, (128, 128), AugmentConfig(), epochs=1, cache="ram")
    assert all(image.shape[:2] and max(image.shape[:2]) == 128 for image in cached._cache)
    assert cached[0][0].shape == (3, 128, 128)


def test_broken_image_is_replaced_and_logged_once(tmp_path, caplog):
    index = coloured_index(tmp_path, count=3)
    index.records[1].path.write_bytes(b"")  # broke after indexing
    dataset = TrainDataset(index, (96, 96), AugmentConfig(mosaic=0.0), epochs=1)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            image, targets = dataset[1]
            assert image.shape == (3, 96, 96)
    lines = [r.getMessage() for r in caplog.records if "img1.png" in r.getMessage()]
    assert len(lines) == 1 and "empty file" in lines[0] and "using another image" in lines[0]


def test_preview_grid_written(tmp_path):
    dataset = TrainDataset(coloured_index(tmp_path, count=4), (96, 96), AugmentConfig(mosaic=1.0), epochs=1)
    path = save_preview(dataset, tmp_path / "run" / "preview.png", n=4)
    grid = cv2.imread(str(path))
    assert grid.shape == (192, 192, 3)
    red = (grid[..., 2] > 200) & (grid[..., 1] < 60) & (grid[..., 0] < 60)  # boxes and objects drawn in colour
    assert red.any()
