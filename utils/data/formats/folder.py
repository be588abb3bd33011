"""A plain folder pair: images/ + annotations/ (one Pascal VOC XML per image, same stem), as labelImg and many
exports write it. No split files: every split is made in memory (utils.data.reader.split_ids). The XML is
parsed and scored as VOC's (utils/data/voc_xml.py; inclusive-pixel IoU)."""
from __future__ import annotations

from pathlib import Path

from utils.data.reader import FORMATS, DatasetReader, SourceSplit, split_ids
from utils.data.voc_xml import image_lookup, orphans, xml_entries, xml_ids


@FORMATS.register("folder")
class FolderReader(DatasetReader):
    description = "a folder with images/ + annotations/ (Pascal VOC XML, one per image)"
    pixel_offset = 1.0  # VOC XML boxes: inclusive integer pixels

    def detect(self, data: Path) -> bool:
        return data.is_dir() and (data / "images").is_dir() and (data / "annotations").is_dir()

    def stated_splits(self, data: Path) -> list[str]:
        return []

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        xml_dir, images = data / "annotations", image_lookup(data / "images")
        source = SourceSplit([], None, data, made=split != "all")
        ids = split_ids(xml_ids(xml_dir), split, seed, data)
        orphans(images, xml_dir, source.problems)
        source.entries = xml_entries(ids, xml_dir, images, source.problems)
        return source
