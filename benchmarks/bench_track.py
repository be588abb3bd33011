"""Tracking (predict.py --track) on the synthetic video with known trajectories: MOTA, IDF1, ID switches and the
number of identities against the truth, and the end-to-end frame rate with tracking against detection alone.

    python -m utils.sample_data --video --out shapes_video            # shapes.mp4 + shapes_gt.txt (300 frames)
    python -m utils.sample_data --video --as-voc --out shapes_frames --seed 1 --frames 600 --every 2
    python train.py --data shapes_frames --weights logs/exp/best.pth --input-shape 320 --epochs 15 --name track_frames
    python benchmarks/bench_track.py --weights logs/track_frames/best.pth --video shapes_video/shapes.mp4 --conf 0.4

(the detector: a sample model fine-tuned on the frames of another seed's video; see docs/results.md)

The scores are TrackEval's CLEAR and Identity metrics (the MOTChallenge evaluation code; `pip install trackeval`) at
IoU 0.5, with MOTChallenge's preprocessing of ignored truth: a truth row marked 0 (a shape less than half visible:
cut by the border or hidden behind another) is not scored, and the tracker's box matched to it is removed rather
than counted as a false positive. Speed: the video is run --rounds times per mode, detection alone and detection +
tracking interleaved, through predict.py's own loop (utils.deploy.predictor.predict_source) without writing
anything; the ratio of the two frame rates is printed. Prints JSON lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_track.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.common.errors import MissingDependencyError  # noqa: E402
from utils.deploy.cli import add_tracker_settings, track_options  # noqa: E402
from utils.deploy.predictor import ResultWriter, predict_source  # noqa: E402
from utils.deploy.sources import open_source  # noqa: E402
from utils.deploy.tracking import Tracking, TrackOptions  # noqa: E402
from utils.runtime.detector import DetectOptions  # noqa: E402
from utils.runtime.loader import load_runnable  # noqa: E402

MATCH_IOU = 0.5  # MOTChallenge's CLEAR-MOT threshold


def read_mot(path: Path) -> dict[int, np.ndarray]:
    """A MOTChallenge text file -> {frame: float ndarray[K, 7] (id, x, y, w, h, flag/score, class)}."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2, usecols=range(8)) if path.stat().st_size else np.zeros((0, 8))
    return {int(frame): rows[rows[:, 0] == frame, 1:8] for frame in np.unique(rows[:, 0])}


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] given as (left, top, width, height): float ndarray[N, M]."""
    a1, b1 = a[:, None, :2], b[None, :, :2]
    a2, b2 = a1 + a[:, None, 2:], b1 + b[None, :, 2:]
    inter = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(axis=2)
    union = a[:, None, 2:].prod(axis=2) + b[None, :, 2:].prod(axis=2) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def drop_ignored(truth: np.ndarray, hyps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MOTChallenge's preprocessing: match all truth to the tracker's boxes (Hungarian, IoU >= 0.5), remove the
    tracker's boxes matched to ignored truth (flag 0), then the ignored truth itself."""
    ignored = truth[:, 5] == 0
    if ignored.any() and len(hyps):
        iou = box_iou_xywh(truth[:, 1:5], hyps[:, 1:5])
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols] >= MATCH_IOU - np.finfo(float).eps
        drop = cols[matched & ignored[rows]]
        hyps = np.delete(hyps, drop, axis=0)
    return truth[~ignored], hyps


def mot_scores(truth_path: Path, result_path: Path) -> dict:
    """CLEAR (MOTA, ID switches) and Identity (IDF1) metrics of a MOTChallenge result file against its truth."""
    try:
        from trackeval.metrics import CLEAR, Identity
    except ImportError as err:
        raise MissingDependencyError(f"scoring tracks needs TrackEval ({err}): pip install trackeval") from err
    truth, result = read_mot(truth_path), read_mot(result_path)
    frames = range(1, max([*truth, *result, 0]) + 1)
    pairs = [drop_ignored(truth.get(f, np.zeros((0, 7))), result.get(f, np.zeros((0, 7)))) for f in frames]
    truth_ids = np.unique(np.concatenate([t[:, 0] for t, _ in pairs] + [np.zeros(0)])).astype(int)
    result_ids = np.unique(np.concatenate([h[:, 0] for _, h in pairs] + [np.zeros(0)])).astype(int)
    data = {"num_timesteps": len(pairs), "num_gt_ids": len(truth_ids), "num_tracker_ids": len(result_ids),
            "num_gt_dets": sum(len(t) for t, _ in pairs), "num_tracker_dets": sum(len(h) for _, h in pairs),
            "gt_ids": [np.searchsorted(truth_ids, t[:, 0].astype(int)) for t, _ in pairs],
            "tracker_ids": [np.searchsorted(result_ids, h[:, 0].astype(int)) for _, h in pairs],
            "similarity_scores": [box_iou_xywh(t[:, 1:5], h[:, 1:5]) for t, h in pairs]}
    clear = CLEAR({"PRINT_CONFIG": False}).eval_sequence(data)
    identity = Identity({"PRINT_CONFIG": False}).eval_sequence(data)
    return {"mota": round(float(clear["MOTA"]), 4), "idf1": round(float(identity["IDF1"]), 4),
            "id_switches": int(clear["IDSW"]), "truth_tracks": len(truth_ids), "tracks": len(result_ids),
            "false_positives": int(clear["CLR_FP"]), "misses": int(clear["CLR_FN"]),
            "mostly_tracked": int(clear["MT"]), "truth_boxes": data["num_gt_dets"]}


def run_video(detector, video: Path, tracking: Tracking | None) -> tuple[int, float]:
    """(frames, seconds) of predict.py's loop over the video, writing nothing."""
    writer = ResultWriter(None, detector.config.classes)
    start = time.perf_counter()
    predict_source(detector, open_source(video), writer, tracking=tracking)
    return writer.images, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a detector trained on the bundled sample")
    parser.add_argument("--video", type=Path, required=True, help="shapes.mp4 of `python -m utils.sample_data --video`")
    parser.add_argument("--truth", type=Path, default=None, help="its ground truth (default: <video stem>_gt.txt)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each mode, interleaved (0: scores only)")
    parser.add_argument("--conf", type=float, default=0.5)
    parser.add_argument("--iou", type=float, default=DetectOptions.iou_thres,
                        help="NMS IoU threshold, as predict.py --iou")
    add_tracker_settings(parser.add_argument_group("tracker settings, as predict.py's"))
    parser.add_argument("--keep", type=Path, default=None,
                        help="also copy the tracker's MOTChallenge file here (a file path), to look at its switches")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    truth = args.truth or args.video.with_name(f"{args.video.stem}_gt.txt")
    options = track_options(args)
    detector = load_runnable(args.weights, device=args.device).detector()
    names = detector.config.classes
    with tempfile.TemporaryDirectory() as folder:
        detector.options = DetectOptions(options.low, args.iou)  # as predict.py --track sets it
        tracking = Tracking(options, Path(folder), names, lambda stem: 25.0)
        run_video(detector, args.video, tracking)
        tracking.close()
        result = Path(folder) / "tracks" / f"{args.video.stem}.txt"
        if not result.is_file():  # no track at all: an empty result, scored as such
            result.parent.mkdir(exist_ok=True)
            result.touch()
        scores = mot_scores(truth, result)
        if args.keep is not None:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result, args.keep)
    print(json.dumps({"bench": "track_scores", "video": str(args.video), "conf": args.conf, "iou": args.iou,
                      "tracker": options.tracker, "track_iou": options.match_iou, "track_buffer": options.buffer,
                      "per_class": options.per_class, "relink": options.relink, **scores}))
    if args.rounds > 0:
        print_speed(detector, args, options)
    return 0


def print_speed(detector, args: argparse.Namespace, options: TrackOptions) -> None:
    """JSON lines: frames/s of detection alone and with tracking, --rounds each, interleaved; their best ratio."""
    names = detector.config.classes
    fps: dict[str, list[float]] = {"detect": [], "track": []}
    for _ in range(args.rounds):
        for mode in fps:
            detector.options = DetectOptions(options.low if mode == "track" else args.conf, args.iou)
            tracking = Tracking(options, None, names, lambda stem: 25.0) if mode == "track" else None
            frames, seconds = run_video(detector, args.video, tracking)
            fps[mode].append(frames / seconds)
            print(json.dumps({"bench": "track_speed", "mode": mode, "frames": frames,
                              "frames_per_s": round(frames / seconds, 2)}))
    best = {mode: max(values) for mode, values in fps.items()}
    print(json.dumps({"bench": "track_speed_ratio", "track_vs_detect": round(best["track"] / best["detect"], 3),
                      **{f"{mode}_frames_per_s": round(value, 2) for mode, value in best.items()}}))


if __name__ == "__main__":
    raise SystemExit(main())
