"""The Ultralytics side of bench_learning.py, run by the Python of a separate environment that has ultralytics
(a benchmark-only package, never a requirement of this project; see docs/results.md for the setup).

    python benchmarks/learning_ultralytics.py '{"mode": "train", ...}'

One JSON object in, one JSON line out (the last line printed). Modes:
- train: {"model": "yolov8n.yaml", "data": DATA_YAML, "epochs", "imgsz", "batch", "seed", "project", "name"}: trains
  from the yaml (no pretrained weights) with the tool's own defaults otherwise, resuming an unfinished run;
  prints {"weights": best.pt}.
- predict: {"weights", "images": [paths], "imgsz", "out": JSON_PATH}: detections at conf 0.001 with the tool's own NMS
  defaults (as its val: IoU 0.7, 300 per image), boxes in original pixels, written to `out` as
  {image path: [[x1, y1, x2, y2, score, class], ...]}.
- info: {"model": yaml or weights, "imgsz", "nc"}: parameters and GFLOPs (torch.utils.flop_counter, as this
  project counts its own model).

The caller sets YOLO_OFFLINE=1 (no network checks) and YOLO_CONFIG_DIR (settings inside the study folder); the
logging integrations that Ultralytics turns on when it finds their packages (MLflow, ClearML, Comet, DVC, ...) and its
usage events are switched off there, so a run writes only its own folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

QUIET_SETTINGS = {"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
                  "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False}


def quiet() -> None:
    """Switch off the integrations and events Ultralytics would start (only the keys this version has)."""
    from ultralytics import settings

    settings.update({k: v for k, v in QUIET_SETTINGS.items() if k in settings})


def train(spec: dict) -> dict:
    from ultralytics import YOLO

    quiet()

    run = Path(spec["project"]) / spec["name"]
    weights = run / "weights"
    common = {"device": "cpu", "plots": False, "amp": False, "verbose": False}
    if not finished(run, spec["epochs"]):
        if (weights / "last.pt").is_file():  # killed mid-way: continue where it stopped
            YOLO(str(weights / "last.pt")).train(resume=True, **common)
        else:
            YOLO(spec["model"]).train(data=spec["data"], epochs=spec["epochs"], imgsz=spec["imgsz"],
                                      batch=spec["batch"], seed=spec["seed"], pretrained=False,
                                      project=spec["project"], name=spec["name"], exist_ok=True, **common)
    return {"weights": str(weights / "best.pt")}


def finished(run: Path, epochs: int) -> bool:
    """best.pt written and results.csv holding `epochs` rows."""
    results = run / "results.csv"
    if not (run / "weights" / "best.pt").is_file() or not results.is_file():
        return False
    return len([line for line in results.read_text().splitlines()[1:] if line.strip()]) >= epochs


def predict(spec: dict) -> dict:
    from ultralytics import YOLO

    model = YOLO(spec["weights"])
    detections = {}
    for image in spec["images"]:
        result = model.predict(image, imgsz=spec["imgsz"], conf=0.001, iou=0.7, max_det=300, device="cpu",
                               verbose=False)[0]
        boxes = result.boxes
        rows = torch.cat((boxes.xyxy, boxes.conf[:, None], boxes.cls[:, None]), dim=1) if len(boxes) else []
        detections[image] = [[float(v) for v in row] for row in rows]
    Path(spec["out"]).write_text(json.dumps(detections), encoding="utf-8")
    return {"images": len(detections), "out": spec["out"]}


def info(spec: dict) -> dict:
    from ultralytics import YOLO

    model = YOLO(spec["model"]).model
    if str(spec["model"]).endswith(".yaml") and spec.get("nc"):
        from ultralytics.nn.tasks import DetectionModel

        model = DetectionModel(spec["model"], nc=spec["nc"], verbose=False)
    model = model.float().eval()
    parameters = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, spec["imgsz"], spec["imgsz"]))
    return {"parameters": parameters, "gflops": counter.get_total_flops() / 1e9}


MODES = {"train": train, "predict": predict, "info": info}


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(MODES[request.pop("mode")](request)))
