"""Network definitions: CSPDarknet53-tiny backbone, YOLOv4-tiny body and attention blocks."""
