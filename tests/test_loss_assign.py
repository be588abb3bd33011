"""YoloLoss with YOLOv5's assignment (LossConfig assign="ratio", neighbour cells, IoU objectness) against a slow,
obvious reference: Python loops over boxes, heads, anchors and cells (the helpers of tests/test_loss.py)."""
from __future__ import annotations

import math

import pytest
import torch

from tests.test_loss import bce, ciou_loss, iou_xyxy, make_config, random_outputs, random_targets
from tests.test_loss import reference_decode as decode
from utils.common.errors import ConfigError
from utils.model.config import ModelConfig
from utils.train.loss import HEAD_BALANCE, YoloLoss
from utils.train.loss_config import LossConfig

YOLOV5 = LossConfig(assign="ratio", neighbour_cells=True, obj_target="iou", ignore_threshold=1.0, box_gain=0.05,
                    obj_gain=1.0, cls_gain=0.5)


def reference_rows(rows, mask, anchors, grid_hw, stride_xy, ratio, neighbours):
    """[(image, slot, j, i, row)]: every anchor of the mask within `ratio` of the box, at the centre cell (clamped)
    and, with neighbours, the cell left or right and the cell above or below nearest the centre."""
    h, w = grid_hw
    found = []
    for r, (b, _, x1, y1, x2, y2) in enumerate(rows):
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / stride_xy[0], (y1 + y2) / 2 / stride_xy[1]
        i, j = min(max(math.floor(cx), 0), w - 1), min(max(math.floor(cy), 0), h - 1)
        cells = [(i, j)]
        if neighbours:
            fx, fy = cx - math.floor(cx), cy - math.floor(cy)
            if fx < 0.5 and cx > 1:
                cells.append((i - 1, j))
            if fy < 0.5 and cy > 1:
                cells.append((i, j - 1))
            if fx > 0.5 and cx < w - 1:
                cells.append((i + 1, j))
            if fy > 0.5 and cy < h - 1:
                cells.append((i, j + 1))
        for slot, k in enumerate(mask):
            aw, ah = anchors[k]
            if max(bw / aw, aw / bw, bh / ah, ah / bh) < ratio:
                found += [(int(b), slot, cj, ci, r) for ci, cj in cells]
    return found


def reference_ratio_loss(outputs, targets, config, options: LossConfig):
    nc, s = config.num_classes, config.scale_x_y
    first = config.strides[0]
    batch, in_h, in_w = outputs[0].shape[0], outputs[0].shape[2] * first, outputs[0].shape[3] * first
    anchors = [tuple(a) for a in config.anchors]
    rows = targets.tolist()
    box = obj = cls = 0.0
    for head, (out, mask) in enumerate(zip(outputs, config.anchors_mask, strict=True)):
        a, (h, w) = len(mask), out.shape[2:]
        stride = (in_w / w, in_h / h)
        p = out.detach().float().view(batch, a, 5 + nc, h, w).permute(0, 1, 3, 4, 2).tolist()
        found = reference_rows(rows, mask, anchors, (h, w), stride, options.anchor_ratio, options.neighbour_cells)
        target = {}
        box_sum = cls_sum = 0.0
        for b, k, j, i, r in found:
            t = p[b][k][j][i]
            loss = ciou_loss(decode(t, i, j, anchors[mask[k]], stride, s), rows[r][2:])
            box_sum += loss
            cls_sum += sum(bce(t[5 + c], float(c == int(rows[r][1]))) for c in range(nc))
            quality = max(1 - loss, 0.0) if options.obj_target == "iou" else 1.0
            target[(b, k, j, i)] = max(target.get((b, k, j, i), 0.0), quality)  # the largest of a shared cell
        if found:
            box += options.box_gain * box_sum / len(found)
            cls += options.cls_gain * nc / 80 * cls_sum / (len(found) * nc)
        obj_sum, count = 0.0, 0
        for b in range(batch):
            gts = [row[2:] for row in rows if int(row[0]) == b]
            for k in range(a):
                for j in range(h):
                    for i in range(w):
                        t = p[b][k][j][i]
                        if (b, k, j, i) not in target and options.ignore_threshold < 1.0:
                            pred = decode(t, i, j, anchors[mask[k]], stride, s)
                            if any(iou_xyxy(pred, g) > options.ignore_threshold for g in gts):
                                continue
                        obj_sum, count = obj_sum + bce(t[4], target.get((b, k, j, i), 0.0)), count + 1
        obj += HEAD_BALANCE[config.strides[head]] * options.obj_gain * in_h * in_w / 416 ** 2 * obj_sum / count
    return {"box": box, "obj": obj, "cls": cls, "total": box + obj + cls}, len(found)


def test_ratio_assignment_with_three_heads_matches_reference():
    """--heads 3 (strides 32, 16, 8; 9 anchors): the same assignment per head, the stride-8 head's balance."""
    torch.manual_seed(13)
    config = ModelConfig(classes=["a", "b", "c"], heads=3, input_shape=[256, 256], scale_x_y=2.0)
    outputs = random_outputs(config, 2, (256, 256))
    targets = random_targets(2, 5, 3, (256, 256))
    got = YoloLoss(config, options=YOLOV5)(outputs, targets)
    want, _ = reference_ratio_loss(outputs, targets, config, YOLOV5)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("options,scale_x_y,input_hw", [
    (YOLOV5, 2.0, (320, 320)),
    (LossConfig(assign="ratio", obj_target="one", ignore_threshold=0.5), 1.0, (416, 320)),
    (LossConfig(assign="ratio", neighbour_cells=True, anchor_ratio=2.5, obj_target="iou", ignore_threshold=0.7),
     2.0, (320, 416)),
])
def test_ratio_assignment_matches_reference(options, scale_x_y, input_hw):
    torch.manual_seed(11)
    config = make_config(3, input_hw, scale_x_y)
    outputs = random_outputs(config, 2, input_hw)
    targets = random_targets(2, 5, 3, input_hw)
    got = YoloLoss(config, options=options)(outputs, targets)
    want, _ = reference_ratio_loss(outputs, targets, config, options)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


def positive_count(config, targets, options) -> int:
    """Positive (box, anchor, cell) rows over all heads, counted through the gradient of the box loss."""
    outputs = tuple(torch.zeros_like(o).requires_grad_() for o in random_outputs(config, 2, (320, 320)))
    YoloLoss(config, options=options)(outputs, targets)["box"].backward()
    nc = config.num_classes
    return sum(int((o.grad.view(2, 3, 5 + nc, *o.shape[2:])[:, :, :4].abs().sum(2) > 0).sum()) for o in outputs)


def test_ratio_with_neighbours_gives_several_times_more_positives():
    torch.manual_seed(12)
    config = make_config(2, (320, 320), 2.0)
    targets = random_targets(2, 6, 2, (320, 320))
    reference = positive_count(config, targets, LossConfig())
    ratio = positive_count(config, targets, LossConfig(assign="ratio"))
    neighbours = positive_count(config, targets, YOLOV5)
    assert ratio > reference and neighbours >= 2.5 * ratio
    assert neighbours >= 4 * reference, (reference, ratio, neighbours)


def test_iou_objectness_target_follows_the_box_fit():
    """Objectness of a positive is pulled towards its box's CIoU: a poorly placed box lowers its own target."""
    config = make_config(1, (320, 320), 2.0)
    target = torch.tensor([[0, 0, 100, 100, 180, 180]], dtype=torch.float32)
    options = LossConfig(assign="ratio", obj_target="iou", ignore_threshold=1.0)

    def obj_grad(tw: float) -> float:
        outputs = tuple(torch.zeros_like(o) for o in random_outputs(config, 1, (320, 320)))
        outputs[0][0, 2] = tw  # slot 0 of the stride-32 head: its width
        outputs = tuple(o.requires_grad_() for o in outputs)
        YoloLoss(config, options=options)(outputs, target)["obj"].backward()
        return outputs[0].grad[0, 4, 4, 4].item()  # objectness logit at the box centre's cell (140 / 32 = 4)
    # the logit is 0 (p = 0.5): BCE's gradient is p - target, so a better box (higher target) pulls harder upwards
    good, bad = obj_grad(0.0), obj_grad(1.5)
    assert good < bad and good < 0


def test_options_are_checked():
    with pytest.raises(ConfigError, match="scale_x_y"):
        YoloLoss(make_config(2), options=YOLOV5)
    with pytest.raises(ConfigError, match="assign"):
        LossConfig(assign="nearest")
    with pytest.raises(ConfigError, match="neighbour_cells"):
        LossConfig(neighbour_cells=True)
    with pytest.raises(ConfigError, match="unknown --loss option"):
        LossConfig.from_dict({"gain": 1})
