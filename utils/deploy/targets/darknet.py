"""Darknet .cfg + .weights (attention none only: Darknet has no SE/CBAM/ECA/CA layers), see utils.model.darknet."""
from __future__ import annotations

from pathlib import Path

from utils.deploy.targets.base import ExportRequest, ExportTarget
from utils.model.darknet import export_darknet


def export(request: ExportRequest) -> list[Path]:
    return list(export_darknet(request.model, request.config, request.stem))


TARGET = ExportTarget(export, "Darknet .cfg + .weights (attention none), run by Darknet, OpenCV DNN or this project",
                      runs_here="CPU (PyTorch, with --cfg)", benchmark=False)
