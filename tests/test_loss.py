"""YoloLoss against a slow, obvious reference (Python loops over boxes and cells, hand-written BCE and CIoU)."""
from __future__ import annotations

import math

import pytest
import torch

from utils.model.config import ModelConfig
from utils.train.loss import YoloLoss, assign_anchors

ANCHORS = ModelConfig(classes=["a"]).anchors  # yolov4-tiny defaults, input px


def make_config(num_classes: int, input_shape=(416, 416), scale_x_y: float = 1.0) -> ModelConfig:
    return ModelConfig(classes=[f"c{i}" for i in range(num_classes)], input_shape=list(input_shape),
                       scale_x_y=scale_x_y)


def random_outputs(config: ModelConfig, batch: int, input_hw, std: float = 0.5, requires_grad: bool = False):
    """Raw heads; a small std keeps predicted boxes near anchor size, so some overlap ground truths (ignore)."""
    h, w = input_hw
    outs = []
    for stride, mask in zip(config.strides, config.anchors_mask, strict=True):
        out = torch.randn(batch, len(mask) * (5 + config.num_classes), h // stride, w // stride) * std
        outs.append(out.requires_grad_(requires_grad))
    return tuple(outs)


def random_targets(batch: int, per_image: int, num_classes: int, input_hw, generator=None) -> torch.Tensor:
    """Rows (image, class, x1, y1, x2, y2) with sizes spanning all anchors, plus the awkward cases."""
    h, w = input_hw
    n = batch * per_image
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(5), math.log(350), generator=generator))
    centre = torch.rand(n, 2, generator=generator) * torch.tensor([w, h])
    boxes = torch.cat((centre - size / 2, centre + size / 2), 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    image = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, num_classes, (n,), generator=generator).float()
    rows = torch.cat((image[:, None], cls[:, None], boxes), 1)
    extra = torch.tensor([
        [0, 0, 50, 60, 59, 74],  # best anchor 0 (10x14), which no head uses: falls back
        [0, 0, 160, 160, 241, 242],  # best anchor 3 (81x82): positive in both heads
        [batch - 1, 0, w - 10, h - 20, w + 30, h + 20],  # centre beyond the corner: cell clamped to the grid
        [0, 0, 100, 100, 100, 140],  # zero width: not a positive anywhere
    ], dtype=torch.float32)
    duplicate = rows[:1].clone()
    duplicate[0, 1] = (duplicate[0, 1] + 1) % num_classes  # same box, other class: the later row wins
    return torch.cat((rows, extra, duplicate), 0)


# ---------------------------------------------------------------------------------------------------------------
# The slow reference: plain Python floats, loops over boxes and cells, no torchvision.

def bce(logit: float, target: float) -> float:
    return max(logit, 0.0) - logit * target + math.log1p(math.exp(-abs(logit)))


def iou_xyxy(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ciou_loss(p, g) -> float:
    iou = iou_xyxy(p, g)
    rho2 = ((p[0] + p[2]) / 2 - (g[0] + g[2]) / 2) ** 2 + ((p[1] + p[3]) / 2 - (g[1] + g[3]) / 2) ** 2
    c2 = (max(p[2], g[2]) - min(p[0], g[0])) ** 2 + (max(p[3], g[3]) - min(p[1], g[1])) ** 2
    v = 4 / math.pi ** 2 * (math.atan((g[2] - g[0]) / (g[3] - g[1])) - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
    alpha = v / (1 - iou + v)
    return 1 - iou + rho2 / c2 + alpha * v


def reference_anchor(w: float, h: float, anchors_mask) -> int:
    ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in ANCHORS]
    best = max(range(len(ANCHORS)), key=lambda k: ious[k])
    used = sorted({k for mask in anchors_mask for k in mask})
    return best if best in used else max(used, key=lambda k: ious[k])


def reference_decode(t, i, j, anchor, stride_xy, s):
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    cx = (sig(t[0]) * s - (s - 1) / 2 + i) * stride_xy[0]
    cy = (sig(t[1]) * s - (s - 1) / 2 + j) * stride_xy[1]
    w, h = math.exp(t[2]) * anchor[0], math.exp(t[3]) * anchor[1]
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def reference_positives(rows, masks, head, grid_hw, stride_xy):
    """{(image, slot, j, i): row index}; a later row overwrites an earlier one."""
    positives = {}
    for r, (b, _, x1, y1, x2, y2) in enumerate(rows):
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        best, mask = reference_anchor(x2 - x1, y2 - y1, masks), masks[head]
        if best not in mask:
            continue
        i = min(max(math.floor((x1 + x2) / 2 / stride_xy[0]), 0), grid_hw[1] - 1)
        j = min(max(math.floor((y1 + y2) / 2 / stride_xy[1]), 0), grid_hw[0] - 1)
        positives[(int(b), mask.index(best), j, i)] = r
    return positives


def reference_loss(outputs, targets, config, eps=0.0, ignore_threshold=0.5):
    nc, s = config.num_classes, config.scale_x_y
    batch, in_h, in_w = outputs[0].shape[0], outputs[0].shape[2] * 32, outputs[0].shape[3] * 32
    rows = targets.tolist()
    box = obj = cls = 0.0
    ignored_count = 0
    for head, (out, mask) in enumerate(zip(outputs, config.anchors_mask, strict=True)):
        a, (h, w) = len(mask), out.shape[2:]
        stride = (in_w / w, in_h / h)
        p = out.detach().float().view(batch, a, 5 + nc, h, w).permute(0, 1, 3, 4, 2).tolist()
        positives = reference_positives(rows, config.anchors_mask, head, (h, w), stride)
        box_sum = cls_sum = 0.0
        for (b, k, j, i), r in positives.items():
            t = p[b][k][j][i]
            box_sum += ciou_loss(reference_decode(t, i, j, ANCHORS[mask[k]], stride, s), rows[r][2:])
            cls_sum += sum(bce(t[5 + c], (c == int(rows[r][1])) * (1 - eps) + eps / nc) for c in range(nc))
        if positives:
            box += 0.05 * box_sum / len(positives)
            cls += nc / 80 * cls_sum / (len(positives) * nc)
        obj_sum, count = 0.0, 0
        for b in range(batch):
            gts = [row[2:] for row in rows if int(row[0]) == b]
            for k in range(a):
                for j in range(h):
                    for i in range(w):
                        t = p[b][k][j][i]
                        if (b, k, j, i) in positives:
                            obj_sum, count = obj_sum + bce(t[4], 1.0), count + 1
                            continue
                        pred = reference_decode(t, i, j, ANCHORS[mask[k]], stride, s)
                        if any(iou_xyxy(pred, g) > ignore_threshold for g in gts):
                            ignored_count += 1
                            continue
                        obj_sum, count = obj_sum + bce(t[4], 0.0), count + 1
        obj += (0.4, 1.0)[head] * 5 * in_h * in_w / 416 ** 2 * obj_sum / count
    return {"box": box, "obj": obj, "cls": cls, "total": box + obj + cls}, ignored_count


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes,input_hw,eps,scale_x_y", [
    (20, (416, 416), 0.0, 1.0),
    (1, (320, 320), 0.1, 1.0),
    (3, (320, 416), 0.05, 1.05),
    (80, (416, 320), 0.0, 1.0),
])
def test_matches_reference(num_classes, input_hw, eps, scale_x_y):
    torch.manual_seed(num_classes)
    config = make_config(num_classes, input_hw, scale_x_y)
    outputs = random_outputs(config, 2, input_hw)
    targets = random_targets(2, 5, num_classes, input_hw)
    got = YoloLoss(config, label_smoothing=eps)(outputs, targets)
    want, ignored = reference_loss(outputs, targets, config, eps)
    assert ignored > 0, "the random case should exercise the ignore rule"
    for key in want:
        assert got[key].dtype == torch.float32
        assert got[key].item() == pytest.approx(want[key], rel=1e-4, abs=1e-4), key
    assert (got["box"] + got["obj"] + got["cls"]).item() == pytest.approx(got["total"].item(), abs=1e-6)


def test_input_size_read_from_outputs_not_config():
    """A multi-scale batch at 320 through a config made for 416 uses 320's strides and objectness weight."""
    torch.manual_seed(1)
    config = make_config(2, (416, 416))
    outputs = random_outputs(config, 2, (320, 320))
    targets = random_targets(2, 3, 2, (320, 320))
    got = YoloLoss(config)(outputs, targets)
    want, _ = reference_loss(outputs, targets, config)
    assert got["total"].item() == pytest.approx(want["total"], rel=1e-4)


def grads_of(config, targets, key="cls", batch=1, input_hw=(416, 416)):
    """Per-head gradient of loss[key] w.r.t. zero outputs, as [B, A, H, W, 5+nc]."""
    outputs = tuple(torch.zeros_like(o).requires_grad_() for o in random_outputs(config, batch, input_hw))
    YoloLoss(config)(outputs, targets)[key].backward()
    nc = config.num_classes
    return [o.grad.view(batch, 3, 5 + nc, *o.shape[2:]).permute(0, 1, 3, 4, 2) for o in outputs]


def nonzero_cells(grad: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(ix) for ix in (grad[..., 5:].abs().sum(-1) > 0).nonzero().tolist()]


def test_unused_best_anchor_falls_back_to_best_masked_anchor():
    anchors = torch.tensor(ANCHORS)
    used = torch.tensor([False, True, True, True, True, True])
    assert assign_anchors(torch.tensor([[10.0, 14.0]]), anchors, torch.ones(6, dtype=torch.bool)).item() == 0
    assert assign_anchors(torch.tensor([[10.0, 14.0]]), anchors, used).item() == 1
    # End to end: a 10x14 box centred at (100, 100) is a positive of the stride-16 head, anchor 1 = slot 0.
    g32, g16 = grads_of(make_config(4), torch.tensor([[0, 2, 95, 93, 105, 107]], dtype=torch.float32))
    assert nonzero_cells(g32) == []
    assert nonzero_cells(g16) == [(0, 0, 6, 6)]


def test_anchor_in_both_masks_is_positive_in_both_heads():
    g32, g16 = grads_of(make_config(4), torch.tensor([[0, 1, 160, 160, 241, 242]], dtype=torch.float32))
    assert nonzero_cells(g32) == [(0, 0, 6, 6)]  # anchor 3 is slot 0 of mask [3, 4, 5]
    assert nonzero_cells(g16) == [(0, 2, 12, 12)]  # and slot 2 of mask [1, 2, 3]


def test_later_box_wins_a_shared_cell_and_anchor():
    torch.manual_seed(3)
    config = make_config(5)
    outputs = random_outputs(config, 1, (416, 416))
    first = torch.tensor([[0, 1, 140, 120, 275, 289]], dtype=torch.float32)
    second = first.clone()
    second[0, 1] = 4
    loss = YoloLoss(config)
    both, only_second, only_first = (loss(outputs, t) for t in (torch.cat((first, second)), second, first))
    for key in ("box", "cls"):
        assert both[key].item() == pytest.approx(only_second[key].item(), rel=1e-6)
    assert both["cls"].item() != pytest.approx(only_first["cls"].item(), rel=1e-3)


def one_box_case(num_classes=3):
    """A 135x169 box centred at (208, 208): best anchor 4, so head 0 slot 1, cell (6, 6) at 416."""
    config = make_config(num_classes)
    outputs = tuple(torch.zeros_like(o) for o in random_outputs(config, 1, (416, 416)))
    target = torch.tensor([[0, 2, 208 - 67.5, 208 - 84.5, 208 + 67.5, 208 + 84.5]])
    return config, outputs, target


def set_raw(outputs, config, head, slot, j, i, values: dict[int, float]):
    nc = config.num_classes
    for channel, value in values.items():
        outputs[head][0, slot * (5 + nc) + channel, j, i] = value


def test_overlapping_negative_is_ignored():
    config, outputs, target = one_box_case()
    # Slot 2 of head 0 (anchor 344x319) in the same cell decodes exactly onto the box: IoU 1, so it is ignored.
    set_raw(outputs, config, 0, 2, 6, 6, {2: math.log(135 / 344), 3: math.log(169 / 319)})
    loss = YoloLoss(config)
    obj = []
    for logit in (-3.0, 0.0, 4.0):
        set_raw(outputs, config, 0, 2, 6, 6, {4: logit})
        obj.append(loss(outputs, target)["obj"].item())
    assert obj[0] == pytest.approx(obj[1], rel=1e-7) == pytest.approx(obj[2], rel=1e-7)
    # Not ignored when the threshold is above its IoU, nor when its box overlaps less (half the size: IoU 0.25).
    assert YoloLoss(config, ignore_threshold=1.0)(outputs, target)["obj"].item() != pytest.approx(obj[2], rel=1e-3)
    set_raw(outputs, config, 0, 2, 6, 6, {2: math.log(135 / 344 / 2), 3: math.log(169 / 319 / 2)})
    assert loss(outputs, target)["obj"].item() != pytest.approx(obj[2], rel=1e-3)


def test_label_smoothing_applied_as_formula():
    config, outputs, target = one_box_case(num_classes=4)
    logits = [0.3, -1.2, 2.0, 0.7]
    set_raw(outputs, config, 0, 1, 6, 6, {5 + c: v for c, v in enumerate(logits)})
    eps, nc = 0.2, 4
    smoothed = YoloLoss(config, label_smoothing=eps)(outputs, target)["cls"].item()
    plain = YoloLoss(config)(outputs, target)["cls"].item()
    # target = y * (1 - eps) + eps / nc; class 2 is the true one.
    want = nc / 80 * sum(bce(v, (c == 2) * (1 - eps) + eps / nc) for c, v in enumerate(logits)) / nc
    assert smoothed == pytest.approx(want, rel=1e-5)
    assert plain == pytest.approx(nc / 80 * sum(bce(v, float(c == 2)) for c, v in enumerate(logits)) / nc, rel=1e-5)
    assert abs(smoothed - plain) > 1e-3
    with pytest.raises(ValueError, match="label_smoothing"):
        YoloLoss(config, label_smoothing=1.0)


def test_perfect_predictions_give_small_box_loss():
    torch.manual_seed(5)
    config = make_config(3)
    outputs = tuple(torch.randn_like(o) for o in random_outputs(config, 2, (416, 416)))
    # Boxes in distinct cells, centres inside cells, so each is the only positive at its place.
    targets = torch.tensor([[0, 0, 40, 50, 130, 150], [0, 1, 250, 20, 290, 60], [1, 2, 150, 170, 400, 390],
                            [1, 0, 10, 300, 30, 330]], dtype=torch.float32)
    before = YoloLoss(config)(outputs, targets)["box"].item()
    for b, _, x1, y1, x2, y2 in targets.tolist():
        best = reference_anchor(x2 - x1, y2 - y1, config.anchors_mask)
        for head, (stride, mask) in enumerate(zip((32, 16), config.anchors_mask, strict=True)):
            if best in mask:
                fx, fy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
                i, j, fx, fy = int(fx), int(fy), fx % 1, fy % 1
                aw, ah = ANCHORS[best]
                values = {0: math.log(fx / (1 - fx)), 1: math.log(fy / (1 - fy)), 2: math.log((x2 - x1) / aw),
                          3: math.log((y2 - y1) / ah)}
                nc = config.num_classes
                for channel, value in values.items():
                    outputs[head][int(b), mask.index(best) * (5 + nc) + channel, j, i] = value
    after = YoloLoss(config)(outputs, targets)["box"].item()
    assert before > 0.01 and after < 1e-5


def test_no_targets_gives_only_objectness():
    config = make_config(3)
    outputs = random_outputs(config, 2, (416, 416), requires_grad=True)
    for empty in (torch.zeros(0, 6), torch.zeros(0)):
        result = YoloLoss(config)(outputs, empty)
        assert result["box"].item() == 0 and result["cls"].item() == 0
        assert torch.isfinite(result["obj"]) and result["obj"].item() > 0
        assert result["total"].item() == result["obj"].item()
    result["total"].backward()
    assert all(torch.isfinite(o.grad).all() for o in outputs)


def test_gradients_finite_with_wild_logits():
    torch.manual_seed(7)
    config = make_config(3)
    outputs = random_outputs(config, 2, (416, 416), std=30.0)
    with torch.no_grad():
        outputs[0][:, 2:4] = 1e4  # tw, th of slot 0 everywhere: exp would overflow without the clamp
        outputs[1][:, 10:12] = -1e4  # and underflow to a zero-size box
    for out in outputs:
        out.requires_grad_()
    result = YoloLoss(config)(outputs, random_targets(2, 5, 3, (416, 416)))
    assert all(torch.isfinite(v) for v in result.values())
    result["total"].backward()
    assert all(torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outputs)


def test_bf16_channels_last_outputs_give_float32_loss():
    torch.manual_seed(8)
    config = make_config(3)
    outputs = tuple(o.bfloat16().contiguous(memory_format=torch.channels_last)
                    for o in random_outputs(config, 2, (320, 416)))
    targets = random_targets(2, 4, 3, (320, 416))
    loss = YoloLoss(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = loss(outputs, targets)
    want = loss(tuple(o.float().contiguous() for o in outputs), targets)
    for key in want:
        assert result[key].dtype == torch.float32
        assert result[key].item() == pytest.approx(want[key].item(), rel=1e-6)


def test_bad_input_is_a_clear_error():
    config = make_config(3)
    outputs = random_outputs(config, 2, (416, 416))
    loss = YoloLoss(config)
    with pytest.raises(ValueError, match=r"\[M, 6\]"):
        loss(outputs, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="image index 2"):
        loss(outputs, torch.tensor([[2, 0, 10, 10, 50, 50.0]]))
    with pytest.raises(ValueError, match="class 3"):
        loss(outputs, torch.tensor([[1, 3, 10, 10, 50, 50.0]]))
    with pytest.raises(ValueError, match="does the model match"):
        YoloLoss(make_config(4))(outputs, torch.zeros(0, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    torch.manual_seed(9)
    config = make_config(20)
    outputs = random_outputs(config, 4, (416, 416))
    targets = random_targets(4, 5, 20, (416, 416))
    want = YoloLoss(config)(outputs, targets)
    got = YoloLoss(config).cuda()(tuple(o.cuda() for o in outputs), targets.cuda())
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-5)



def test_yolobody_outputs_feed_the_loss():
    """The real model's heads (stride 32 first) go straight into the loss, and gradients reach both heads."""
    from utils.model.config import build_model
    torch.manual_seed(10)
    config = make_config(2, (64, 96))
    model = build_model(config).train()
    targets = torch.tensor([[0, 0, 10, 8, 50, 40], [1, 1, 40, 20, 90, 60]], dtype=torch.float32)
    result = YoloLoss(config)(model(torch.rand(2, 3, 64, 96)), targets)
    result["total"].backward()
    for head in model.head_output_convs():
        grad = head.weight.grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
