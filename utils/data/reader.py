"""What a dataset format is to the rest of the project: a reader registered by name in FORMATS (the readers
themselves are the modules of utils/data/formats/, which also holds detect_format).

A reader knows how to recognise its format (`detect`), which splits a source states (`stated_splits`), and how to
list the images of one split with their parsed annotations (`read`, giving a `SourceSplit` of `Entry`s). Everything
after that (checking every image, cleaning training targets, counting problems) is utils.data.index's, the same for
every format. The box convention of a format (`pixel_offset`) travels with the index to evaluation.

The split policy, one for every format (`split_ids`): a split the source states is read as stated; a split it does
not state is computed in memory from its images (`make_splits`, seed 0 by default, as train.py and eval.py both
use), never written into the dataset; the index records that it made the split (`SourceSplit.made`) and the run
folder gets the list (DatasetIndex.write_split).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from utils.common.errors import DatasetError
from utils.common.paths import is_regular_file
from utils.common.registry import Registry
from utils.data.annotations import AnnotationError, RawAnnotation

LOGGER = logging.getLogger("utils.data.index")
SPLITS = ("train", "val", "trainval", "test")
TEST_FRACTION = 0.1  # generated splits: 10% test, then 10% of trainval as val (the usual VOC-style 90/10 twice)
VAL_FRACTION = 0.1
MAX_LIST_BYTES = 256 << 20  # a split file or image list of a few million names


@dataclass
class Entry:
    """One image/annotation pair of a source, before checking.

    image: the image file (None when the annotation names none that exists); annotation: the file that describes it;
    raw: its parsed annotation, or why it cannot be used. relative/root: the image path as the data writes it and the
    folder it must stay inside (resolved when the entry is checked: utils.common.paths.resolve_inside); field: where
    that path is written ("<json>: image id 7 file_name"), for refusals. coco_id: the json's image id (COCO)."""

    image: Path | None
    annotation: Path
    raw: RawAnnotation | AnnotationError
    coco_id: int | None = None
    relative: str | None = None
    root: Path | None = None
    field: str = ""


@dataclass
class SourceSplit:
    """One split of a source as its reader lists it.

    classes: the source's class names in order (None: the sorted names found in the annotations); root: the dataset
    folder (split members are written relative to it); made: the split was computed in memory (no file states it);
    problems: lines about the source itself (entries that lead outside it, ...); coco_json: the instances json that
    pycocotools scores against as written (COCO sources only)."""

    entries: list[Entry]
    classes: list[str] | None
    root: Path
    made: bool = False
    problems: list[str] = field(default_factory=list)
    coco_json: Path | None = None


class DatasetReader:
    """The interface of a dataset format. Subclass it in a module of utils/data/formats/, register it with
    `@FORMATS.register("name")`, and list the module in utils/data/formats/__init__.py (READER_MODULES; see
    docs/architecture.md, "Add a dataset format")."""

    description: ClassVar[str] = ""  # what --data takes for this format, for help texts
    pixel_offset: ClassVar[float] = 0.0  # IoU convention: 1 = the VOC devkit's inclusive pixels, 0 = continuous

    def detect(self, data: Path) -> bool:
        """Whether `data` (a file or folder the user gave as --data) is a source of this format."""
        raise NotImplementedError

    def stated_splits(self, data: Path) -> list[str]:
        """The splits the source states (a subset of train/val/test, in that order), without making any."""
        raise NotImplementedError

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        """The entries of `split` (train, val, trainval, test or all). classes: the caller's class list, if any
        (formats that number their classes need it to name them); seed: for a split made in memory."""
        raise NotImplementedError


FORMATS: Registry[type[DatasetReader]] = Registry("dataset format")


# ---------------------------------------------------------------------------------------------------------- splits
def make_splits(ids: list[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic split of ids: 10% test, the rest trainval, of which 10% val. Each list sorted.

    Tiny datasets still get usable splits: from 2 images on, val holds at least one image, from 3 on test too, and
    train always keeps at least one (1 image: train only; training then validates on it, with a warning)."""
    order = np.random.default_rng(seed).permutation(sorted(ids)).tolist()
    n_test = int(round(len(order) * TEST_FRACTION)) or int(len(order) >= 3)
    test, trainval = order[:n_test], order[n_test:]
    n_val = int(round(len(trainval) * VAL_FRACTION)) or int(len(trainval) >= 2)
    val, train = trainval[:n_val], trainval[n_val:]
    return {"train": sorted(train), "val": sorted(val), "trainval": sorted(trainval), "test": sorted(test)}


def split_ids(ids: list[str], split: str, seed: int, origin: Path | str) -> list[str]:
    """The ids of `split` made in memory from all of a source's `ids` (every id for 'all'); says so once."""
    if split == "all":
        return sorted(ids)
    LOGGER.info("%s states no '%s' split; using the seed-%d '%s' split of its %d images made in memory (nothing is "
                "written into the dataset; the run folder gets splits/%s.txt)", origin, split, seed, split, len(ids),
                split)
    return make_splits(ids, seed)[split]


def read_list_text(path: Path, limit: int = MAX_LIST_BYTES) -> str:
    """The text of a list file inside a dataset (split file, image list, classes.txt), refused unread when it is
    not a regular file or larger than `limit` (DatasetError naming it)."""
    if not is_regular_file(path):
        raise DatasetError(f"{path}: not a regular file (a folder, FIFO or device); refused without opening it")
    size = path.stat().st_size
    if size > limit:
        raise DatasetError(f"{path}: {size} bytes is larger than the {limit}-byte limit for this kind of file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
