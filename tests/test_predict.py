"""predict.py end to end (image, folder, glob, video; run folders; --save-txt; errors) and the Detector's maths:
fused + channels_last equals the plain model, batched equals per-image, streaming equals direct calls."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from nets.attention import ATTENTION_NAMES
from tests.synthetic import write_weights
from utils.common.boxes import letterbox
from utils.deploy.sources import SourceError, open_source
from utils.model.config import ModelConfig, build_model
from utils.model.decode import decode_outputs, non_max_suppression
from utils.runtime.detector import DetectOptions, Detector, Prefetcher, objectness_map

CLASSES = ["cat", "dog", "bird"]
SIZE = 128


def make_model(attention: str = "none", seed: int = 0) -> tuple[torch.nn.Module, ModelConfig]:
    """Random weights with non-trivial BatchNorm statistics (so fusing has something to fold) and head biases that
    make anchor 0 of every cell a confident 'cat', so even an untrained model yields detections at --conf 0.5."""
    torch.manual_seed(seed)
    config = ModelConfig(classes=CLASSES, attention=attention, input_shape=[SIZE, SIZE])
    model = build_model(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for head in model.head_output_convs():
            head.weight.mul_(0.1)
            bias = head.bias.view(3, 5 + len(CLASSES))
            bias[:, 4] = -8.0
            bias[0, 4] = bias[0, 5] = 6.0
    return model, config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, config = make_model()
    return write_weights(tmp_path_factory.mktemp("weights") / "best.pth", model.state_dict(), config)


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate([(96, 160), (200, 120), (128, 128)]):
        cv2.imwrite(str(folder / f"img{i}.jpg"), random_image(h, w, i))
    (folder / "notes.txt").write_text("not an image")
    return folder


def run_predict(*argv: str) -> int:
    return predict.main(list(argv))


@pytest.mark.parametrize("kind", ["image", "folder", "glob"])
def test_predict_writes_annotated_images(kind, checkpoint, image_dir, tmp_path, capsys):
    source = {"image": image_dir / "img1.jpg", "folder": image_dir, "glob": image_dir / "img[02].jpg"}[kind]
    expected = {"image": ["img1.jpg"], "folder": ["img0.jpg", "img1.jpg", "img2.jpg"],
                "glob": ["img0.jpg", "img2.jpg"]}[kind]
    save_dir = tmp_path / "logs" / "predict"
    assert run_predict("--weights", str(checkpoint), "--source", str(source), "--save-dir", str(save_dir.parent),
                       "--name", save_dir.name,
                       "--batch-size", "2", "--max-det", "20", "--fps") == 0
    assert sorted(p.name for p in save_dir.iterdir()) == expected
    for name in expected:  # annotated copies keep the original size
        assert cv2.imread(str(save_dir / name)).shape == cv2.imread(str(image_dir / name)).shape
    out = capsys.readouterr().out
    assert f"{len(expected)} image(s):" in out and " cat" in out and "images/s end to end" in out


def test_fps_times_the_steady_rate_after_one_untimed_warm_up(checkpoint, image_dir, tmp_path, monkeypatch):
    calls = []  # (batch size, whether stage times had started counting) of every forward pass
    real_forward = Detector.forward

    def recording_forward(self, batch):
        calls.append((len(batch), self.times.images > 0 or self.times.infer > 0))
        return real_forward(self, batch)

    monkeypatch.setattr(Detector, "forward", recording_forward)
    assert run_predict("--weights", str(checkpoint), "--source", str(image_dir), "--save-dir", str(tmp_path),
                       "--batch-size", "2", "--nosave", "--fps") == 0
    assert calls[0] == (2, False)  # the warm-up, at the run's batch size, outside the timed stages
    assert [size for size, _ in calls[1:]] == [2, 1]  # then the 3 images, timed as before
    calls.clear()
    assert run_predict("--weights", str(checkpoint), "--source", str(image_dir), "--save-dir", str(tmp_path),
                       "--batch-size", "2", "--nosave") == 0
    assert [size for size, _ in calls] == [2, 1]  # without --fps no extra pass


def test_run_folders_are_numbered(checkpoint, image_dir, tmp_path):
    save_dir = tmp_path / "logs" / "predict"
    for _ in range(2):
        assert run_predict("--weights", str(checkpoint), "--source", str(image_dir / "img0.jpg"),
                           "--save-dir", str(save_dir.parent), "--name", save_dir.name, "--max-det", "5") == 0
    assert sorted(p.name for p in save_dir.parent.iterdir()) == ["predict", "predict2"]


def test_save_txt_and_crops_match_the_detector(checkpoint, image_dir, tmp_path):
    save_dir = tmp_path / "run"
    assert run_predict("--weights", str(checkpoint), "--source", str(image_dir), "--save-dir", str(save_dir.parent),
                       "--name", save_dir.name,
                       "--nosave", "--save-txt", "--save-crop", "--max-det", "10", "--fp32") == 0
    assert not list(save_dir.glob("*.jpg"))  # --nosave: no annotated images
    model, config = make_model()
    detector = Detector(model, config, "cpu", DetectOptions(0.5, 0.3, 10), precision="fp32")
    image = cv2.cvtColor(cv2.imread(str(image_dir / "img1.jpg")), cv2.COLOR_BGR2RGB)
    (dets,) = detector([image])
    rows = np.loadtxt(save_dir / "labels" / "img1.txt", ndmin=2)
    assert rows.shape == (len(dets), 6) and len(dets) > 0
    h, w = image.shape[:2]
    expected = np.stack([dets[:, 5], (dets[:, 0] + dets[:, 2]) / 2 / w, (dets[:, 1] + dets[:, 3]) / 2 / h,
                         (dets[:, 2] - dets[:, 0]) / w, (dets[:, 3] - dets[:, 1]) / h, dets[:, 4]], axis=1)
    np.testing.assert_allclose(rows, expected, atol=2e-6)
    assert ((rows[:, 1:5] >= 0) & (rows[:, 1:5] <= 1)).all() and (rows[:, 5] >= 0.5).all()
    assert len(list((save_dir / "crops" / "cat").glob("img1_*.jpg"))) == len(dets)


def write_video(path: Path, frames: int = 4, size: tuple[int, int] = (160, 96)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG/avi here"
    for i in range(frames):
        writer.write(random_image(size[1], size[0], i))
    writer.release()
    return path


def test_predict_video_writes_annotated_video(checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi")
    save_dir = tmp_path / "run"
    assert run_predict("--weights", str(checkpoint), "--source", str(video), "--save-dir", str(save_dir.parent),
                       "--name", save_dir.name,
                       "--batch-size", "3", "--max-det", "5", "--heatmap", "--save-txt") == 0
    capture = cv2.VideoCapture(str(save_dir / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, frame = capture.read()
    assert ok and frame.shape == (96, 160, 3)
    capture.release()
    assert sorted(p.name for p in (save_dir / "labels").iterdir())[0] == "clip_000000.txt"
    assert "4 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("make_source, message", [
    (lambda d: d / "missing.jpg", "not found"),
    (lambda d: d / "nothing*.png", "matches no files"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "notes.txt:1: 'x' is not a stream URL"),
    (lambda d: (d / "broken.mp4").write_bytes(b"garbage" * 64) and d / "broken.mp4", "cannot be opened"),
    (lambda d: (d / "broken.jpg").write_bytes(b"<html>oops</html>") and d / "broken.jpg", "is a text file"),
])
def test_bad_sources_give_one_clear_error(make_source, message, checkpoint, tmp_path, capsys):
    source = make_source(tmp_path)
    code = run_predict("--weights", str(checkpoint), "--source", str(source), "--save-dir", str(tmp_path), "--name",
                       "r")
    assert code == 1
    lines = [line for line in "".join(capsys.readouterr()).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and str(source) in lines[0]


def test_missing_weights_and_verbose_traceback(image_dir, tmp_path, capsys):
    assert run_predict("--weights", str(tmp_path / "nope.pth"), "--source", str(image_dir)) == 1
    assert "nope.pth not found" in "".join(capsys.readouterr())
    with pytest.raises(Exception, match="not found"):
        run_predict("--weights", str(tmp_path / "nope.pth"), "--source", str(image_dir), "--verbose")


def test_no_webcam_is_a_clear_error():
    with pytest.raises(SourceError, match="no webcam at index 97"):
        open_source("97")


def test_class_filter_by_name_or_index(checkpoint, image_dir, tmp_path, capsys):
    assert predict.class_filter(["dog", "2"], CLASSES) == [1, 2]
    assert predict.class_filter(["0,bird"], CLASSES) == [0, 2]
    with pytest.raises(ValueError, match="neither a class name nor an index below 3"):
        predict.class_filter(["horse"], CLASSES)
    assert run_predict("--weights", str(checkpoint), "--source", str(image_dir), "--nosave", "--classes", "dog") == 0
    assert "no detections" in capsys.readouterr().out  # every confident box is a cat


class DistinctScores(torch.nn.Module):
    """`model` whose scores cannot tie: every candidate (head, anchor, cell) gets its own fixed objectness logit,
    spaced 6 / N apart over [-3, 3] in a fixed shuffled order, and a fixed confident 'cat'; boxes still come from the
    image through the random head. A random model alone scores the cells of the grey letterbox padding (and most
    others) alike to ~1e-6, so which of two tied, overlapping boxes NMS keeps, or which ties the --max-det cut
    keeps, is decided by float rounding, which differs between batch sizes and between CPUs."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, size: int = SIZE) -> None:
        super().__init__()
        self.model, self.anchors = model, len(config.anchors_mask[0])
        cells = [self.anchors * (size // s) ** 2 for s in config.strides]
        ramp = torch.linspace(-3, 3, sum(cells))[torch.randperm(sum(cells), generator=torch.Generator().manual_seed(0))]
        self.logits = [part.view(self.anchors, size // s, size // s)
                       for part, s in zip(ramp.split(cells), config.strides, strict=True)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = []
        for head, logits in zip(self.model(x), self.logits, strict=True):  # [B, A * (5 + nc), H, W] per head
            head = head.clone().unflatten(1, (self.anchors, -1))
            head[:, :, 4] = logits.to(head)
            head[:, :, 5:] = -6.0
            head[:, :, 5] = 6.0
            outputs.append(head.flatten(1, 2))
        return tuple(outputs)


def test_batched_equals_per_image_and_stream_equals_call():
    """Images of three sizes (three letterbox placements) in one batch get the detections each gets alone, in the
    same order, and streaming in batches of 2 gets them too. The network is checked on its raw outputs (float
    rounding apart); the whole pipeline (letterbox, decode, NMS, --max-det, back to original pixels) on a model
    whose scores do not tie (DistinctScores), so the comparison is exact up to rounding, on any CPU."""
    model, config = make_model("cbam")
    images = [random_image(h, w, i) for i, (h, w) in enumerate([(90, 150), (160, 100), (128, 128)])]
    plain = Detector(model, config, "cpu", optimize=False, precision="fp32")
    canvases = np.stack([plain.prepare(image).canvas for image in images])
    together = plain.raw_outputs(canvases)
    for i in range(len(images)):
        for alone, head in zip(plain.raw_outputs(canvases[i:i + 1]), together, strict=True):
            torch.testing.assert_close(head[i:i + 1], alone, atol=1e-4, rtol=1e-4)
    detector = Detector(DistinctScores(model, config), config, "cpu", DetectOptions(0.5, 0.3, 30), precision="fp32")
    batched, decoded = detector.detect_prepared([detector.prepare(image) for image in images])
    assert all(len(kept) > 30 for kept in non_max_suppression(decoded, 0.5, 0.3, max_det=1000))  # the cut matters
    assert all(0 < len(d) <= 30 for d in batched)  # fewer where a box lay wholly on the padding
    assert all(np.diff(d[:, 4]).max() < -1e-4 for d in batched)  # distinct scores, best first
    for image, dets in zip(images, batched, strict=True):
        np.testing.assert_allclose(detector([image])[0], dets, atol=1e-3)
    streamed = [d for _, results, _ in detector.stream(images, batch_size=2) for d in results]
    for a, b in zip(streamed, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert detector.times.images == 3 + 3 + 3 and detector.times.summary()["images_per_s"] > 0


@pytest.mark.parametrize("attention", ATTENTION_NAMES)
def test_fused_channels_last_equals_plain_model(attention):
    model, config = make_model(attention)
    batch = np.stack([letterbox(random_image(100, 140, i), (SIZE, SIZE))[0] for i in range(2)])
    plain = Detector(model, config, "cpu", optimize=False, precision="fp32")
    fast = Detector(model, config, "cpu", optimize=True, precision="fp32")
    assert fast.to_tensor(batch).is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.model.modules())
    for a, b in zip(plain.raw_outputs(batch), fast.raw_outputs(batch), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_detections_are_clipped_to_the_original_image():
    model, config = make_model()
    image = random_image(60, 200, 0)
    (dets,) = Detector(model, config, "cpu", DetectOptions(0.5, 0.3, 100), precision="fp32")([image])
    assert len(dets) and dets[:, [0, 2]].max() <= 200 and dets[:, [1, 3]].max() <= 60 and dets[:, :4].min() >= 0


def test_prefetcher_keeps_order_and_reraises_errors():
    assert list(Prefetcher(range(20), lambda x: x * x, depth=3)) == [x * x for x in range(20)]

    def fail_at_5(x: int) -> int:
        if x == 5:
            raise ValueError("bad item 5")
        return x

    seen = []
    with pytest.raises(ValueError, match="bad item 5"):
        for value in Prefetcher(range(10), fail_at_5, depth=2):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]


def test_objectness_map_covers_the_canvas_and_peaks_at_the_max():
    model, config = make_model()
    with torch.no_grad():
        decoded = decode_outputs(model(torch.rand(1, 3, SIZE, SIZE)), config)[0]
    heat = objectness_map(decoded, config, (SIZE, SIZE))
    assert heat.shape == (SIZE, SIZE)
    assert heat.max() == pytest.approx(float(decoded[:, 4].max()), abs=1e-5) and heat.min() >= 0


def test_folder_skips_an_unreadable_image_with_a_warning(image_dir, tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((image_dir / "img0.jpg").read_bytes())
    (folder / "b.jpg").write_bytes(b"")
    source = open_source(folder)
    assert source.length == 2 and [f.name for f in source] == ["a.jpg"]
    assert "b.jpg" in caplog.text and "empty file" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY decides only on Linux/X11")
def test_show_without_a_display_is_a_clear_error(checkpoint, image_dir, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run_predict("--weights", str(checkpoint), "--source", str(image_dir), "--show", "--nosave") == 1
    assert "--show needs a display" in "".join(capsys.readouterr())


def test_truncated_jpeg_is_used_as_decoded_with_one_warning(checkpoint, image_dir, tmp_path, caplog, capsys,
                                                             monkeypatch):
    """A JPEG cut short is detected on as far as it decodes (not skipped), with one warning line naming it."""
    monkeypatch.setattr("utils.deploy.cli.setup_logging", lambda verbose=False: None)  # keep pytest's log capture
    folder = tmp_path / "cut"
    folder.mkdir()
    data = (image_dir / "img1.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data)
    (folder / "t.jpg").write_bytes(data[: len(data) * 6 // 10])
    save_dir = tmp_path / "out"
    assert run_predict("--weights", str(checkpoint), "--source", str(folder), "--save-dir", str(save_dir.parent),
                       "--name", save_dir.name,
                       "--max-det", "5") == 0
    assert sorted(p.name for p in save_dir.iterdir()) == ["a.jpg", "t.jpg"]
    assert cv2.imread(str(save_dir / "t.jpg")).shape == cv2.imread(str(folder / "a.jpg")).shape
    lines = [r.getMessage() for r in caplog.records if "t.jpg" in r.getMessage()]
    assert len(lines) == 1 and "JPEG is truncated" in lines[0] and "used as decoded" in lines[0], lines
    assert "2 image(s):" in capsys.readouterr().out
