"""Detect objects in images, folders, globs, videos, a webcam or streams, or export a model (ONNX, OpenVINO,
TorchScript, NCNN, Core ML, TensorRT, Darknet).

    python predict.py --source photo.jpg                      # newest logs/*/best.pth
    python predict.py --weights logs/run/best.pth --source clips/street.mp4 --save-txt --fps
    python predict.py --weights model.onnx --source "data/**/*.jpg" --classes person car
    python predict.py --source rtsp://user:pass@camera/stream --vid-stride 2     # or http(s)://, or a .txt list
    python predict.py --weights logs/run/best.pth --export onnx
    python predict.py --weights logs/run/best.pth --export onnx --int8        # also best_int8.onnx (CPU, ~2x)
    python predict.py --weights logs/run/best.pth --export openvino --int8    # best.xml, best_int8.xml (NNCF)
    python predict.py --source clips/street.mp4 --track                       # ByteTrack IDs, tracks/street.txt (MOT)
    python predict.py --source aerial/ --slice 416 --slice-overlap 0.2        # small objects in large images

Outputs go to a new run folder (logs/predict, logs/predict2, ...); nothing is overwritten.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2

from nets.attention import attention_choices
from utils.common.cli import (
    CommandParser,
    NumberRange,
    add_precision_argument,
    positive_int,
    probability,
    requested_precision,
    run_command,
    setup_logging,
)
from utils.common.device import precision_note
from utils.common.errors import ConfigError
from utils.common.image_io import DEFAULT_MAX_PIXELS, set_max_pixels
from utils.common.run_dir import claim_run_dir, remove_if_empty
from utils.data.index import load_split
from utils.deploy.attention_maps import attention_detector, write_attention_maps
from utils.deploy.predictor import ResultWriter, StreamWriters, display_available, predict_source
from utils.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, letterboxed
from utils.deploy.sources import ImageSource, SourceError, VideoSource
from utils.deploy.streams import (
    DEFAULT_STREAM_TIMEOUT,
    MAX_STREAM_TIMEOUT,
    RECONNECTS,
    StreamSet,
    mask_url,
    open_any_source,
)
from utils.deploy.targets import EXPORT_TARGETS, ExportRequest
from utils.deploy.tracking import TRACKERS, Tracking, TrackOptions
from utils.model.config import ROOT, ModelConfig
from utils.runtime.detector import BaseDetector, DetectOptions, Detector
from utils.runtime.loader import load_runnable
from utils.runtime.slice_options import add_slice_arguments, slice_options
from utils.runtime.slicing import SlicedDetector

LOGGER = logging.getLogger("predict")
DEFAULT_SOURCE = ROOT / "VOCdevkit" / "VOC2007" / "JPEGImages"
DEFAULT_DATA = ROOT / "VOCdevkit"


def get_args_parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=__doc__)
    model = parser.add_argument_group("model")
    model.add_argument("--weights", help="our checkpoint (.pth), a bare state_dict (with --names), a Darknet "
                       ".weights (with --cfg) or an export (.onnx, OpenVINO .xml, .torchscript, .ncnn.param, "
                       "TensorRT .engine); default: the newest logs/*/best.pth")
    model.add_argument("--weights-sha256", help="expected sha256 of --weights given as a URL (default: the hash "
                       "prefix in the file name, torch.hub style, if any)")
    model.add_argument("--names", help="class names file (one per line), only for bare state_dicts and Darknet files")
    model.add_argument("--phi", default=None, help=f"attention of a bare state_dict: {attention_choices()}")
    model.add_argument("--cfg", help="Darknet .cfg for a .weights file")
    model.add_argument("--input-shape", help="e.g. 416 or 320,416 (default: the model's)")
    model.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: best available)")
    add_precision_argument(model)
    model.add_argument("--fp32", action="store_true", help="--precision fp32 (fused model kept)")
    model.add_argument("--plain", action="store_true", help="unfused fp32 model, the slow reference path")
    model.add_argument("--compile", action="store_true",
                       help="torch.compile the model (inductor, frozen weights): ~30-60 s once per batch size, "
                            "then ~1.1x faster end to end on a 2-core CPU at batch 1; for long videos")
    detect = parser.add_argument_group("detection")
    detect.add_argument("--source", help="image, folder, glob, video file, webcam index, stream URL (rtsp, rtsps, "
                        "rtmp, http, https: a video or an MJPEG stream) or a .txt list of streams, videos and webcams "
                        "read side by side (default: the project's VOCdevkit/VOC2007/JPEGImages)")
    detect.add_argument("--vid-stride", type=positive_int, default=1,
                        help="videos and streams: detect on every Nth frame")
    detect.add_argument("--stream-timeout", type=NumberRange(float, 0, MAX_STREAM_TIMEOUT, low_open=True),
                        default=DEFAULT_STREAM_TIMEOUT,
                        help="seconds a stream may take to open or to send its next frame before it counts as "
                             f"failed; a dropped connection is reopened up to {RECONNECTS} times first")
    detect.add_argument("--conf", type=probability, default=0.5,
                        help="score threshold (objectness x class probability)")
    detect.add_argument("--iou", type=probability, default=0.3, help="NMS IoU threshold")
    detect.add_argument("--max-det", type=positive_int, default=300, help="most detections kept per image")
    detect.add_argument("--agnostic-nms", action="store_true", help="NMS across classes")
    detect.add_argument("--classes", nargs="+", help="keep only these classes, by name or index (e.g. 0 2 or dog)")
    detect.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    output = parser.add_argument_group("output")
    output.add_argument("--save-dir", default="logs", help="project folder (as in train.py and eval.py): results go "
                        "to SAVE_DIR/NAME")
    output.add_argument("--name", default="predict", help="run folder name inside --save-dir (predict, predict2, "
                        "... never overwritten)")
    output.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    output.add_argument("--save-txt", action="store_true", help="labels/<image>.txt: class xc yc w h conf (0-1)")
    output.add_argument("--save-crop", action="store_true", help="crops/<class>/<image>_<k>.jpg")
    output.add_argument("--heatmap", action="store_true", help="draw over the objectness heat map")
    output.add_argument("--attention-maps", action="store_true",
                        help="also write <image>_attention.jpg per image: detections, objectness and every attention "
                             "block's map (CBAM spatial gate, CA height x width gates, SE/ECA channel-weighted "
                             "energy); same layout for any checkpoint, to compare models side by side")
    output.add_argument("--show", action="store_true", help="show results in a window (q quits)")
    output.add_argument("--fps", action="store_true",
                        help="print pre-process / inference / NMS ms and images/s (after one untimed warm-up pass)")
    output.add_argument("--export", choices=EXPORT_TARGETS.names(),
                        help="export the model into the run folder (checked against PyTorch); no detection")
    output.add_argument("--int8", action="store_true",
                        help="with --export onnx / openvino / tensorrt: also write an int8 model (<name>_int8.*), "
                             "calibrated on --source images (default: VOCdevkit's train split); about 2x faster "
                             "on CPUs with VNNI; check its mAP with eval.py --weights <name>_int8.*")
    output.add_argument("--calib-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="calibration images for --int8")
    output.add_argument("--max-pixels", type=positive_int, default=None,
                        help="refuse images declaring more pixels than this, before decoding (decompression "
                             f"bombs); default {DEFAULT_MAX_PIXELS} (about 268 MP), or the YOLO_MAX_PIXELS "
                             "environment variable")
    output.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    add_track_arguments(parser.add_argument_group("tracking (videos, webcams, streams, image sequences)"))
    add_slice_arguments(parser.add_argument_group("sliced inference (small objects in large images)"))
    return parser


def add_track_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--track", action="store_true",
                       help="follow objects from frame to frame (with --tracker): IDs drawn on the frames, "
                            "tracks/<source>.txt in the MOTChallenge layout, tracks per class at the end")
    add_tracker_settings(group)


def add_tracker_settings(group: argparse._ArgumentGroup) -> None:
    """The tracker's flags (--tracker, --track-*), shared with benchmarks/bench_track.py; track_options reads them."""
    defaults = TrackOptions()
    group.add_argument("--tracker", default=defaults.tracker, choices=TRACKERS.names(),
                       help="the association method (docs/prediction.md compares them on a synthetic video)")
    group.add_argument("--track-buffer", type=int, default=defaults.buffer,
                       help="frames (counted at 30 fps) a lost track waits for its object before it ends")
    group.add_argument("--track-iou", type=float, default=defaults.match_iou,
                       help="least IoU between a track's predicted box and a detection to match them")
    group.add_argument("--track-low", type=float, default=defaults.low,
                       help="detections from this score up (below --conf) keep existing tracks alive; only "
                            "--conf + 0.1 starts a track")
    group.add_argument("--track-per-class", action="store_true",
                       help="one tracker per class: a box is never matched to a track of another class (fewer "
                            "swaps between crossing objects of different classes; a detector that flips an object's "
                            "class breaks its track)")
    group.add_argument("--track-relink", type=float, default=defaults.relink,
                       help="a newly confirmed track takes the ID of a lost track of its class whose last (or "
                            "extrapolated) position is within this many of its box sizes; 0 turns it off")
    group.add_argument("--track-gap", type=float, default=defaults.gap_seconds,
                       help="seconds without frames after which a reconnecting stream's tracks end")


def track_options(args: argparse.Namespace) -> TrackOptions:
    return TrackOptions(tracker=args.tracker, conf=args.conf, low=args.track_low, match_iou=args.track_iou,
                        buffer=args.track_buffer, gap_seconds=args.track_gap, per_class=args.track_per_class,
                        relink=args.track_relink).check()


def class_filter(values: list[str] | None, names: list[str]) -> list[int] | None:
    """--classes entries -> sorted class indices. Each value is first taken whole as a class name (so a name with a
    comma can be given), else split on commas; each part is a class name first, then an index: "2" is the class
    named "2" when there is one (a warning says so when it could also mean index 2)."""
    if not values:
        return None
    indices = set()
    for text in values:
        parts = [text.strip()] if text.strip() in names else [v.strip() for v in text.split(",") if v.strip()]
        indices.update(_class_index(part, names) for part in parts)
    return sorted(indices)


def _class_index(value: str, names: list[str]) -> int:
    if value in names:
        index = names.index(value)
        if value.isdigit() and int(value) < len(names) and int(value) != index:
            LOGGER.warning("--classes %s: a class is named %r (index %d), so that class is kept, not index %s (%r); "
                           "names come first, then indices", value, value, index, value, names[int(value)])
        return index
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise ConfigError(f"--classes {value!r} is neither a class name nor an index below {len(names)}; "
                      f"the model's classes are {', '.join(names)}")


def load_detector(args: argparse.Namespace) -> BaseDetector:
    loaded = load_runnable(args.weights, args.names, args.phi, args.cfg, args.device, args.input_shape,
                           args.weights_sha256)
    precision = requested_precision(args.precision, args.fp32 or args.plain, "--plain" if args.plain else "--fp32")
    detector = loaded.detector(optimize=not args.plain, precision=precision, compile=args.compile and not args.plain)
    if isinstance(detector, Detector):
        LOGGER.info("%s", precision_note(detector.device, precision, detector.precision))
    # --track: detections down to --track-low feed ByteTrack's second association; the tracker keeps what it tracks
    conf = min(args.conf, args.track_low) if args.track else args.conf
    detector.options = DetectOptions(conf, args.iou, args.max_det, args.agnostic_nms,
                                     class_filter(args.classes, detector.config.classes))
    if args.slice is not None:
        detector = SlicedDetector(detector, slice_options(args))
    return detector


def export(args: argparse.Namespace) -> list[Path]:
    save_dir = claim_save_dir(args)  # first: an unwritable --save-dir is found before the work
    try:
        return _export_into(args, save_dir)
    except BaseException:
        remove_if_empty(save_dir)
        raise


def _export_into(args: argparse.Namespace, save_dir: Path) -> list[Path]:
    loaded = load_runnable(args.weights, args.names, args.phi, args.cfg, "cpu", args.input_shape,
                           args.weights_sha256)
    if loaded.model is None:
        raise ConfigError(f"{loaded.path} is already an export ({loaded.kind}); --export needs PyTorch or Darknet "
                          "weights")
    request = ExportRequest(loaded.model, loaded.config, save_dir / loaded.path.stem, int8=args.int8,
                            calibration=lambda: calibration_canvases(args, loaded.config))
    return EXPORT_TARGETS.get(args.export).export(request)


def calibration_canvases(args: argparse.Namespace, config: ModelConfig) -> list:
    """Letterboxed canvases of up to --calib-images images of --source (default: the bundled VOCdevkit's train split,
    so that its test split stays unseen for eval.py), for --int8."""
    if args.source is None and DEFAULT_DATA.is_dir():
        source = ImageSource([record.path for record in load_split(DEFAULT_DATA, "train").records])
    else:
        source = open_any_source(args.source or DEFAULT_SOURCE)
    if source.kind != "images":
        raise SourceError(f"--int8 calibrates on images; --source {mask_url(str(args.source))} is a {source.kind}: "
                          "give a folder or glob of images like those the model will see")
    images = (frame.image for frame in source)
    return list(letterboxed(images, config.input_shape, args.calib_images))


def claim_save_dir(args: argparse.Namespace) -> Path:
    """A new run folder: SAVE_DIR/NAME, else numbered (logs/predict2, ...); claimed atomically."""
    return claim_run_dir(args.save_dir, args.name)


def run(args: argparse.Namespace) -> None:
    set_max_pixels(args.max_pixels)
    if args.int8 and not (args.export and EXPORT_TARGETS.get(args.export).int8):
        int8_targets = [name for name, target in EXPORT_TARGETS.items() if target.int8]
        raise ConfigError(f"--int8 quantizes an export: add --export {' / '.join(int8_targets)}")
    if args.export:
        for path in export(args):
            print(f"exported {path}")
        return
    if args.show and not display_available():
        raise OSError("--show needs a display (no DISPLAY or WAYLAND_DISPLAY set); drop --show and open the saved "
                      "images, or run with X forwarding")
    if args.source is None and not DEFAULT_SOURCE.is_dir():
        raise SourceError(f"no --source given and the sample folder {DEFAULT_SOURCE} is absent; pass --source")
    if args.slice is not None and (args.heatmap or args.attention_maps):
        raise ConfigError("--heatmap and --attention-maps draw one canvas per image; --slice runs many: drop one")
    tracking_options = track_options(args) if args.track else None  # bad --track-* values fail before any work
    saving = not args.nosave or args.save_txt or args.save_crop or args.track
    # claimed only when writing, and first: an unwritable --save-dir is found before the work; removed again when
    # the run fails before writing anything
    save_dir = claim_save_dir(args) if saving or args.attention_maps else None
    try:
        detect(args, save_dir, saving, tracking_options)
    except BaseException:
        remove_if_empty(save_dir)
        raise


def detect(args: argparse.Namespace, save_dir: Path | None, saving: bool,
           tracking_options: TrackOptions | None = None) -> None:
    """Detect on --source, writing into `save_dir` what the flags ask for (and tracking with `tracking_options`)."""
    source = open_any_source(args.source or DEFAULT_SOURCE, args.vid_stride, args.stream_timeout)
    if args.attention_maps and not isinstance(source, ImageSource):
        raise SourceError("--attention-maps draws one picture per image: give an image, a folder or a glob")
    detector = load_detector(args)
    maps_detector = attention_detector(detector) if args.attention_maps else None  # a plain copy, hooked
    tracking = make_tracking(tracking_options, save_dir, detector.config.classes, source) if args.track else None
    writer = result_writer(args, save_dir if saving else None, detector.config.classes, source)
    try:
        # with --slice, --batch-size counts tiles per forward pass (SliceOptions.batch) and images go one at a time
        images_per_batch = 1 if args.slice is not None else args.batch_size
        if args.fps:  # --fps reports the steady rate: a runtime's first-call set-up is not an image's time
            detector.warmup([detector.slicing.batch if isinstance(detector, SlicedDetector) else images_per_batch])
        predict_source(detector, source, writer, images_per_batch, args.heatmap, args.show, tracking)
        if maps_detector is not None:  # a second pass on the hooked copy: the fast path above stays as it is
            write_attention_maps(maps_detector, source, save_dir)
    finally:
        writer.close()
        if tracking is not None:
            tracking.close()
        if args.show:
            cv2.destroyAllWindows()
    if isinstance(source, StreamSet) and source.failures and not writer.images:
        remove_if_empty(writer.save_dir)  # nothing arrived: only the failure's line, no folder left behind
    else:
        report(detector, writer, args.fps, tracking)
    if isinstance(source, StreamSet):
        source.raise_failures()


def make_tracking(options: TrackOptions, save_dir: Path | None, class_names: list[str],
                  source: ImageSource | VideoSource | StreamSet) -> Tracking:
    """One tracker per source of the run, each told its source's frame rate; stream URLs are `live` (their
    reconnect gaps are measured)."""
    if isinstance(source, StreamSet):
        live = frozenset(s.stem for s in source.sources if s.is_url)
        return Tracking(options, save_dir, class_names, source.fps_of, live)
    return Tracking(options, save_dir, class_names, lambda stem: source.fps)


def result_writer(args: argparse.Namespace, save_dir: Path | None, class_names: list[str],
                  source: ImageSource | VideoSource | StreamSet) -> ResultWriter | StreamWriters:
    """The writer of a run: one ResultWriter, or one per source of a stream set (each its own video and labels)."""
    if isinstance(source, StreamSet):
        return StreamWriters(save_dir, class_names, source, not args.nosave, args.save_txt, args.save_crop)
    return ResultWriter(save_dir, class_names, not args.nosave, args.save_txt, args.save_crop, video_fps=source.fps)


def report(detector: BaseDetector, writer: ResultWriter, fps: bool, tracking: Tracking | None = None) -> None:
    print(f"{writer.images} image(s): {writer.counts_text()}")
    for line in tracking.summary_lines() if tracking is not None else []:
        print(f"tracks of {line}")
    if writer.save_dir is not None:
        print(f"results saved to {writer.save_dir}")
    if fps:
        s = detector.times.summary()
        h, w = detector.input_shape
        print(f"speed at {h}x{w}: pre-process {s['pre_ms']:.1f} ms, inference {s['infer_ms']:.1f} ms, "
              f"NMS {s['nms_ms']:.1f} ms per image; {s['images_per_s']:.1f} images/s end to end")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(lambda: run(args), args.verbose, LOGGER)

