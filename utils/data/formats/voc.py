"""Pascal VOC: a VOCdevkit (one or more VOC<year>/ folders) or one VOC<year>/ folder, with Annotations/*.xml,
JPEGImages/ and optional ImageSets/Main/<split>.txt (the XML itself: utils/data/voc_xml.py).

Boxes are the XML's xmin..xmax as written, scored with the VOC devkit's inclusive-pixel IoU (pixel_offset 1).
Split files hold one id per line (class-specific lists "000005 -1": the first token). A VOC<year> without any split
file gets its splits made in memory; one with split files but not the one asked for contributes no images to it.
Ids from split files are untrusted: "../../x" or "/etc/x" never lead outside Annotations/.
"""
from __future__ import annotations

import logging
from pathlib import Path

from utils.data.reader import FORMATS, SPLITS, DatasetReader, SourceSplit, read_list_text, split_ids
from utils.data.voc_xml import image_lookup, orphans, xml_entries, xml_ids

LOGGER = logging.getLogger("utils.data.index")


# ---------------------------------------------------------------------------------------------------------- reader
@FORMATS.register("voc")
class VocReader(DatasetReader):
    description = "a VOCdevkit folder (VOC<year>/Annotations, JPEGImages, ImageSets/Main) or one VOC<year> folder"
    pixel_offset = 1.0  # the VOC devkit's boxes are inclusive integer pixel indices

    def detect(self, data: Path) -> bool:
        return data.is_dir() and bool(_years(data))

    def stated_splits(self, data: Path) -> list[str]:
        return [s for s in ("train", "val", "test") if any((y / "ImageSets" / "Main" / f"{s}.txt").is_file()
                                                           for y in _years(data))]

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        source = SourceSplit([], None, data)
        for year in _years(data):
            ids, made = _year_ids(year, split, seed)
            if ids is None:
                continue
            source.made |= made
            images = image_lookup(year / "JPEGImages")
            source.entries += xml_entries(ids, year / "Annotations", images, source.problems,
                                          _split_file(year, split))
            if split == "all":
                orphans(images, year / "Annotations", source.problems)
        return source


def _years(root: Path) -> list[Path]:
    """The VOC<year> folders of a devkit (or the folder itself when it holds Annotations/)."""
    if (root / "Annotations").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "Annotations").is_dir())


def _split_file(year: Path, split: str) -> str:
    path = year / "ImageSets" / "Main" / f"{split}.txt"
    return str(path) if path.is_file() else f"{year} ({split} split)"


def _year_ids(year: Path, split: str, seed: int) -> tuple[list[str] | None, bool]:
    """(ids of `split` in one VOC<year> folder, whether they were made in memory); ids None when the year has split
    files but not this one."""
    main = year / "ImageSets" / "Main"
    if split == "all":
        return xml_ids(year / "Annotations"), False
    if (main / f"{split}.txt").is_file():
        text = read_list_text(main / f"{split}.txt")
        return [line.split()[0] for line in text.splitlines() if line.strip()], False  # "000005 -1": the first token
    if any((main / f"{name}.txt").is_file() for name in SPLITS):
        LOGGER.info("%s has no ImageSets/Main/%s.txt; it contributes no images to '%s'", year, split, split)
        return None, False
    return split_ids(xml_ids(year / "Annotations"), split, seed, year), True
