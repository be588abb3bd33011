"""Sliced inference's options (SliceOptions) and their flags, the same in eval.py and predict.py: light to import, so
that --help and a value outside its range answer before torch loads; utils/runtime/slicing.py does the work."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from utils.common.cli import NumberRange, positive_int
from utils.common.errors import ConfigError

MERGES = ("nms", "nmm")
# a tile is a model input: at least the coarsest stride, at most nets.yolo.MAX_INPUT_SIDE
SLICE_SIDE = NumberRange(int, 32, 4096)
OVERLAP = NumberRange(float, 0, 1, high_open=True)


@dataclass
class SliceOptions:
    """Tile side (px), overlap fraction between neighbouring tiles, whether the whole image is also run, the merge
    ("nms" or "nmm") and how many canvases go through the model at once."""

    size: int = 320
    overlap: float = 0.2
    full_image: bool = True
    merge: str = "nms"  # measured: see --slice-merge's help
    batch: int = 8

    def check(self) -> SliceOptions:
        """Self, or ConfigError naming the flag that is out of range."""
        self.size = SLICE_SIDE.check(self.size, "--slice")  # the ranges of the flags, for options built in code
        self.overlap = OVERLAP.check(self.overlap, "--slice-overlap")
        if self.merge not in MERGES:
            raise ConfigError(f"--slice-merge {self.merge!r}: choose one of {', '.join(MERGES)}")
        self.batch = positive_int.check(self.batch, "--batch-size")
        return self


def add_slice_arguments(group: argparse._ArgumentGroup) -> None:
    """--slice and its options, the same in eval.py and predict.py."""
    group.add_argument("--slice", type=SLICE_SIDE, default=None, metavar="PX",
                       help="also detect on overlapping PX x PX tiles of each image at full resolution (SAHI), "
                            "merged with the whole-image pass; e.g. the model's input size")
    group.add_argument("--slice-overlap", type=OVERLAP, default=SliceOptions.overlap,
                       help="overlap of neighbouring tiles, a fraction of --slice")
    group.add_argument("--slice-merge", choices=MERGES, default=SliceOptions.merge,
                       help="nms (default): of boxes overlapping by >= 0.5 of the smaller one, keep the best as "
                            "drawn (SAHI's NMS, IOS metric); nmm: make the best their union (SAHI's GREEDYNMM: joins "
                            "objects cut by a tile border, but low-scored boxes grow it: mAP50 0.00 against nms's "
                            "0.82 on the small-object sample at eval's --conf 0.001)")
    group.add_argument("--slice-full", action=argparse.BooleanOptionalAction, default=SliceOptions.full_image,
                       help="also run the whole image letterboxed (large objects)")


def slice_options(args: argparse.Namespace) -> SliceOptions:
    """The SliceOptions that --slice, --slice-overlap, --slice-merge, --slice-full and --batch-size ask for (with
    --slice, --batch-size counts the tiles of one image that go through the model at once)."""
    return SliceOptions(args.slice, args.slice_overlap, args.slice_full, args.slice_merge, args.batch_size).check()
