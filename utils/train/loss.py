"""YOLOv4-tiny training loss: CIoU box, objectness and class BCE per head, for any number of heads.

`LossConfig()` (the defaults) is the reference implementation's loss: bubbliiiing/yolov4-tiny-pytorch
`nets/yolo_training.py` (YOLOLoss). Same assignment, ignore rule, reductions and weights, but vectorised over ground
truths, with label smoothing that is really applied, and the input size read from the head shapes so multi-scale
batches get the right strides and objectness weight. The other choices (the training recipes of utils/train/recipes.py
pick them) are YOLOv5's (Jocher et al., ultralytics/yolov5 `utils/loss.py`, ComputeLoss.build_targets): every anchor
within a width/height ratio of the box is a positive, in every head, also in the two cells next to the centre cell
that lie nearest the centre, and objectness learns the IoU of the predicted box instead of 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, complete_box_iou_loss

from utils.common.errors import ConfigError
from utils.model.config import ModelConfig
from utils.model.decode import decode_boxes, make_grid
from utils.train.loss_config import LossConfig

# Objectness weight of a head by its stride: the reference's 0.4 for stride 32 (13x13 at 416) and 1.0 for stride 16;
# 4.0 for stride 8 is YOLOv5's value for P3, for a three-head variant.
HEAD_BALANCE = {32: 0.4, 16: 1.0, 8: 4.0}
# The two cells next to the centre cell that lie nearest the box centre, as (dx, dy): left or right, up or down.
NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass
class BatchTargets:
    """Targets of one batch, one row per ground truth (M rows), all on the loss device.

    image: Tensor[M] long; cls: Tensor[M] long; boxes: Tensor[M, 4] (x1, y1, x2, y2) input px;
    valid: Tensor[M] bool (positive width and height); anchor: Tensor[M] long, the assigned index into all anchors;
    padded: Tensor[B, G, 4] the boxes grouped per image (zero boxes fill the gaps), for the ignore test.
    """

    image: torch.Tensor
    cls: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    anchor: torch.Tensor
    padded: torch.Tensor


def assign_anchors(wh: torch.Tensor, anchors: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Best anchor per box by width/height IoU (both aligned at the origin), restricted to anchors used by a head.

    wh: Tensor[M, 2] box sizes; anchors: Tensor[K, 2] anchor sizes (same units); used: Tensor[K] bool, True for
    anchors in some head's mask. Returns Tensor[M] long indices into `anchors`. Restricting the argmax to used
    anchors equals the reference's rule: take the best of all anchors and, when no head uses it (anchor 0 in
    yolov4-tiny), fall back to the best anchor that a head does use.
    """
    iou = box_iou(torch.cat((torch.zeros_like(wh), wh), 1), torch.cat((torch.zeros_like(anchors), anchors), 1))
    return iou.masked_fill(~used, -1.0).argmax(dim=1)


@dataclass
class HeadPositives:
    """The positive rows of one head (R rows), each a ground truth at one anchor and one cell.

    gt: Tensor[R] long, row of BatchTargets; slot: Tensor[R] long, anchor position in the head's mask;
    cell: Tensor[R, 2] long (i, j) = (x, y) grid cell; positive: Tensor[R] bool (rows that count; the reference's
    layout keeps one row per ground truth and masks the others out, so that it needs no device sync).
    """

    gt: torch.Tensor
    slot: torch.Tensor
    cell: torch.Tensor
    positive: torch.Tensor


class YoloLoss(nn.Module):
    """Called as loss(outputs, targets) -> {"box", "obj", "cls", "total"} (float32 scalars, box + obj + cls == total).

    outputs: the model's heads in config.strides order (YoloBody: stride 32, then 16), each Tensor[B, A*(5+nc), H, W],
    any dtype. targets: Tensor[M, 6] rows (image index in batch, class, x1, y1, x2, y2) in pixels of this batch's
    input size. options: LossConfig (default: the reference's loss).

    Per head, on the positives (see LossConfig.assign): box = mean of (1 - CIoU) between decoded prediction and ground
    truth; cls = mean over positives and classes of BCE-with-logits against y * (1 - eps) + eps / nc (eps =
    label_smoothing). obj = mean BCE-with-logits over positives (target 1, or their CIoU) and negatives (target 0),
    leaving out negatives whose decoded box has IoU > ignore_threshold with a ground truth of the same image. Totals
    (reference gains): box = 0.05 * sum of heads, cls = nc / 80 * sum, obj = 5 * (h * w / 416^2) * sum of
    HEAD_BALANCE[stride_l] * obj_l. As in the reference, the head balance weighs only the objectness term.
    """

    def __init__(self, config: ModelConfig, label_smoothing: float = 0.0, ignore_threshold: float | None = None,
                 options: LossConfig | None = None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing {label_smoothing} (--label-smoothing) must be in [0, 1)")
        self.options = options or LossConfig()
        if self.options.neighbour_cells and config.scale_x_y < 2.0:
            raise ConfigError(f"loss neighbour_cells needs a model whose scale_x_y is at least 2 (this one: "
                              f"{config.scale_x_y}): its centres cannot reach the neighbouring cells")
        self.anchors_mask = [list(m) for m in config.anchors_mask]
        self.num_classes = config.num_classes
        self.scale_x_y = config.scale_x_y
        self.label_smoothing = label_smoothing
        self.ignore_threshold = self.options.ignore_threshold if ignore_threshold is None else ignore_threshold
        self.strides = tuple(config.strides)
        self.balance = [HEAD_BALANCE[stride] for stride in self.strides]
        self.box_ratio = self.options.box_gain
        self.obj_gain = self.options.obj_gain
        self.cls_ratio = self.options.cls_gain * config.num_classes / 80
        anchors = torch.tensor(config.anchors, dtype=torch.float32)
        # slot[l][k]: position of anchor k in head l's mask, -1 when head l does not use it.
        slot = torch.full((len(self.anchors_mask), len(anchors)), -1, dtype=torch.long)
        for head, mask in enumerate(self.anchors_mask):
            slot[head, mask] = torch.arange(len(mask))
        # Buffers follow .to(device); forward also moves them if the module was left on another device.
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("slot", slot, persistent=False)
        for head, mask in enumerate(self.anchors_mask):  # index tensors, so no per-call host-to-device copies
            self.register_buffer(f"mask{head}", torch.tensor(mask, dtype=torch.long), persistent=False)

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        device = outputs[0].device
        if self.anchors.device != device:
            self.to(device)
        input_hw = self._check_outputs(outputs)
        # Autocast would run parts of the loss in bf16/fp16; the loss is computed in float32 throughout.
        with torch.autocast(device.type, enabled=False):
            gt = self.build_targets(targets, outputs[0].shape[0], device)
            parts = [self._head_loss(out.float(), head, gt, input_hw) for head, out in enumerate(outputs)]
        obj_ratio = self.obj_gain * input_hw[0] * input_hw[1] / 416 ** 2
        box = self.box_ratio * sum(p[0] for p in parts)
        obj = obj_ratio * sum(self.balance[head] * p[1] for head, p in enumerate(parts))
        cls = self.cls_ratio * sum(p[2] for p in parts)
        return {"box": box, "obj": obj, "cls": cls, "total": box + obj + cls}

    def _check_outputs(self, outputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
        """Validate the head shapes; return the input (height, width) they imply."""
        if len(outputs) != len(self.anchors_mask):
            raise ValueError(f"YoloLoss expects {len(self.anchors_mask)} head outputs, got {len(outputs)}")
        for head, (out, mask) in enumerate(zip(outputs, self.anchors_mask, strict=True)):
            expected = len(mask) * (5 + self.num_classes)
            if out.dim() != 4 or out.shape[1] != expected:
                raise ValueError(f"head {head} output has shape {tuple(out.shape)}; expected [B, {expected}, H, W] "
                                 f"for {len(mask)} anchors and {self.num_classes} classes (does the model match "
                                 f"the config?)")
        return outputs[0].shape[2] * self.strides[0], outputs[0].shape[3] * self.strides[0]

    def build_targets(self, targets: torch.Tensor, batch_size: int, device: torch.device) -> BatchTargets:
        """Targets Tensor[M, 6] -> BatchTargets with assigned anchors. Costs one device sync (per-image box count)."""
        targets = targets.to(device=device, dtype=torch.float32, non_blocking=True)
        if targets.numel() == 0:
            targets = targets.reshape(0, 6)
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets have shape {tuple(targets.shape)}; expected [M, 6] rows "
                             "(image index, class, x1, y1, x2, y2) in input pixels")
        image, cls, boxes = targets[:, 0].long(), targets[:, 1].long(), targets[:, 2:]
        wh = boxes[:, 2:] - boxes[:, :2]
        padded = _pad_per_image(image, cls, boxes, batch_size, self.num_classes)
        return BatchTargets(image=image, cls=cls, boxes=boxes, valid=(wh > 0).all(dim=1),
                           anchor=assign_anchors(wh, self.anchors, (self.slot >= 0).any(dim=0)), padded=padded)

    def _head_loss(self, output: torch.Tensor, head: int, gt: BatchTargets,
                   input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unweighted (box, obj, cls) means of one head; box and cls are 0 when the head has no positives."""
        a, (b, _, h, w) = len(self.anchors_mask[head]), output.shape
        # Not decode.reshape_head's permuted copy of the whole head: the loss reads all of channel 4 but only
        # the positive rows of the others, so a (free, also for channels_last) view is enough.
        pred = output.reshape(b, a, 5 + self.num_classes, h, w)  # [B, A, 5+nc, H, W]
        stride = output.new_full((2,), input_hw[1] / w)  # (x, y) px per cell; filled on device, no copy
        stride[1] = input_hw[0] / h
        anchors = self.anchors[getattr(self, f"mask{head}")]  # [A, 2]
        if self.options.assign == "ratio":
            rows = self._ratio_positives(gt, anchors, (h, w), stride)
        else:
            rows = self._best_anchor_positives(gt, head, (b, a, h, w), stride)
        image = gt.image[rows.gt].clamp(0, b - 1)
        p = pred[image, rows.slot, :, rows.cell[:, 1], rows.cell[:, 0]]  # [R, 5+nc], one row per candidate
        box = decode_boxes(p[:, :4], rows.cell, anchors[rows.slot], stride, self.scale_x_y)
        box_loss, ciou_loss = self._box_loss(box, gt.boxes[rows.gt], rows.positive)
        cls_loss = self._class_loss(p[:, 5:], gt.cls[rows.gt], rows.positive)
        quality = ((1 - ciou_loss.detach()).clamp(min=0) if self.options.obj_target == "iou"
                   else ciou_loss.new_ones(()))
        target, counted = self._objectness_target(rows, image, quality, (b, a, h, w))
        if self.ignore_threshold < 1.0:  # positives, and the negatives that are not ignored
            counted = counted | ~self._ignored(pred[:, :, :4].permute(0, 1, 3, 4, 2), gt.padded, anchors, stride)
        else:
            counted = torch.ones_like(counted)
        weight = counted.float()
        obj_loss = F.binary_cross_entropy_with_logits(pred[:, :, 4], target, weight=weight,
                                                      reduction="sum") / weight.sum().clamp(min=1)
        return box_loss, obj_loss, cls_loss

    @staticmethod
    def _box_loss(box: torch.Tensor, truth: torch.Tensor, positive: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (1 - CIoU) over the positive rows, and 1 - CIoU of every row (Tensor[R]).

        box, truth: Tensor[R, 4] (x1, y1, x2, y2) input px; positive: Tensor[R] bool.
        """
        # Rows that are not positives (maybe degenerate boxes) are compared with their own detached prediction, so
        # CIoU and its gradient stay finite before torch.where drops them.
        safe = torch.where(positive[:, None], truth, box.detach())
        ciou_loss = complete_box_iou_loss(box, safe)
        return torch.where(positive, ciou_loss, 0.0).sum() / positive.sum().clamp(min=1), ciou_loss

    def _class_loss(self, logits: torch.Tensor, cls: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Mean BCE over positive rows and classes; logits: Tensor[R, nc], cls: Tensor[R] long."""
        onehot = logits.new_zeros(logits.shape).scatter_(1, cls[:, None], 1.0)
        smoothed = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes  # y(1-eps) + eps/nc
        bce = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none").sum(dim=1)
        return torch.where(positive, bce, 0.0).sum() / (positive.sum().clamp(min=1) * self.num_classes)

    @staticmethod
    def _objectness_target(rows: HeadPositives, image: torch.Tensor, quality: torch.Tensor,
                           shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Objectness targets Tensor[B, A, H, W] float and the positive cells Tensor[B, A, H, W] bool.

        quality: Tensor[R] (or a scalar): each positive row's target (1, or its box's IoU). Where several rows share a
        cell and anchor the largest wins, an order-free rule: the same targets on every device and in every run.
        """
        b, a, h, w = shape
        key = ((image * a + rows.slot) * h + rows.cell[:, 1]) * w + rows.cell[:, 0]
        value = torch.where(rows.positive, quality.expand(len(key)), -1.0)
        target = torch.full((b * a * h * w,), -1.0, dtype=value.dtype, device=key.device)
        target = target.scatter_reduce(0, key, value, reduce="amax")
        is_positive = (target >= 0).view(b, a, h, w)
        return target.clamp(min=0).view(b, a, h, w), is_positive

    def _best_anchor_positives(self, gt: BatchTargets, head: int, shape: tuple[int, int, int, int],
                               stride: torch.Tensor) -> HeadPositives:
        """The reference's positives: every ground truth at its assigned anchor (best width/height IoU, see
        `assign_anchors`) when this head's mask holds it, in the cell of its centre (floor(centre / stride), clamped
        to the grid). One row per ground truth (no device sync); rows of other heads' anchors are masked out.
        A box whose best anchor is in both masks (anchor 3) is a positive of both heads. When several boxes share
        image, cell and anchor the LAST row of targets wins (as the reference's overwrite).
        """
        b, a, h, w = shape
        slot = self.slot[head, gt.anchor]
        candidate = gt.valid & (slot >= 0)
        slot = slot.clamp(min=0)
        centre = (gt.boxes[:, :2] + gt.boxes[:, 2:]) / 2
        cell = (centre / stride).floor().long()
        cell = torch.stack((cell[:, 0].clamp(0, w - 1), cell[:, 1].clamp(0, h - 1)), dim=1)
        key = ((gt.image.clamp(0, b - 1) * a + slot) * h + cell[:, 1]) * w + cell[:, 0]
        row = torch.arange(len(key), device=key.device)
        winner = torch.full((b * a * h * w,), -1, dtype=torch.long, device=key.device)
        winner = winner.scatter_reduce(0, key, torch.where(candidate, row, -1), reduce="amax")
        return HeadPositives(gt=row, slot=slot, cell=cell, positive=candidate & (winner[key] == row))

    def _ratio_positives(self, gt: BatchTargets, anchors: torch.Tensor, grid_hw: tuple[int, int],
                         stride: torch.Tensor) -> HeadPositives:
        """YOLOv5's positives: each ground truth at every anchor of this head within `anchor_ratio` of its width and
        height, in its centre cell and, with neighbour_cells, the two adjacent cells nearest its centre (left or
        right, up or down; none beyond the grid). anchors: Tensor[A, 2]. One row per (box, anchor, cell); costs one
        device sync (the number of rows)."""
        h, w = grid_hw
        wh = gt.boxes[:, 2:] - gt.boxes[:, :2]  # [M, 2]
        ratio = wh[:, None, :] / anchors[None]  # [M, A, 2]
        match = torch.maximum(ratio, 1 / ratio).amax(dim=2) < self.options.anchor_ratio  # [M, A]
        match &= gt.valid[:, None]
        centre = (gt.boxes[:, :2] + gt.boxes[:, 2:]) / 2 / stride  # [M, 2] (x, y) in cells
        base = torch.stack((centre[:, 0].floor().clamp(0, w - 1), centre[:, 1].floor().clamp(0, h - 1)), dim=1)
        offsets, use = [(0, 0)], [torch.ones_like(match[:, 0])]
        if self.options.neighbour_cells:
            frac, x, y = centre - centre.floor(), centre[:, 0], centre[:, 1]
            offsets += list(NEIGHBOURS)
            use += [(frac[:, 0] < 0.5) & (x > 1), (frac[:, 1] < 0.5) & (y > 1),
                    (frac[:, 0] > 0.5) & (x < w - 1), (frac[:, 1] > 0.5) & (y < h - 1)]
        keep = match[:, :, None] & torch.stack(use, dim=1)[:, None, :]  # [M, A, cells]
        gt_row, slot, which = keep.nonzero(as_tuple=True)
        shift = torch.tensor(offsets, dtype=base.dtype, device=base.device)[which]
        cell = (base[gt_row] + shift).long()
        return HeadPositives(gt=gt_row, slot=slot, cell=cell, positive=torch.ones_like(gt_row, dtype=torch.bool))

    def _ignored(self, t_xywh: torch.Tensor, padded: torch.Tensor, anchors: torch.Tensor,
                 stride: torch.Tensor) -> torch.Tensor:
        """Tensor[B, A, H, W] bool: the decoded box has IoU > ignore_threshold with a ground truth of its image.

        t_xywh: Tensor[B, A, H, W, 4] raw box outputs; padded: Tensor[B, G, 4] ground truths per image.
        """
        b, a, h, w, _ = t_xywh.shape
        if padded.shape[1] == 0:
            return torch.zeros((b, a, h, w), dtype=torch.bool, device=t_xywh.device)
        with torch.no_grad():
            boxes = decode_boxes(t_xywh, make_grid(h, w, t_xywh.device), anchors.view(1, a, 1, 1, 2),
                                 stride, self.scale_x_y)
            iou = box_iou(boxes.reshape(b, -1, 4), padded)  # [B, A*H*W, G]
            return (iou.amax(dim=2) > self.ignore_threshold).view(b, a, h, w)


def _pad_per_image(image: torch.Tensor, cls: torch.Tensor, boxes: torch.Tensor, batch_size: int,
                   num_classes: int) -> torch.Tensor:
    """Boxes Tensor[M, 4] -> Tensor[B, G, 4] grouped by image (G = most boxes in one image; zero boxes pad).

    Also validates image indices and classes; one device sync covers both the checks and G.
    """
    if len(image) == 0:
        return boxes.new_zeros((batch_size, 0, 4))
    counts = torch.zeros(batch_size, dtype=torch.long, device=image.device)
    counts.scatter_add_(0, image.clamp(0, batch_size - 1), torch.ones_like(image))
    lo_img, hi_img, lo_cls, hi_cls, most = torch.stack(
        (image.min(), image.max(), cls.min(), cls.max(), counts.max())).tolist()
    if lo_img < 0 or hi_img >= batch_size:
        raise ValueError(f"targets hold image index {lo_img if lo_img < 0 else hi_img} but the batch has "
                         f"{batch_size} images; column 0 of targets must be the image's index in the batch")
    if lo_cls < 0 or hi_cls >= num_classes:
        raise ValueError(f"targets hold class {lo_cls if lo_cls < 0 else hi_cls} but the model has {num_classes} "
                         f"classes; column 1 of targets must be a class index in [0, {num_classes})")
    order = torch.argsort(image, stable=True)
    first = torch.cumsum(counts, 0) - counts  # row of each image's first box in `order`
    rank = torch.empty_like(image)
    rank[order] = torch.arange(len(image), device=image.device) - first[image[order]]
    padded = boxes.new_zeros((batch_size, most, 4))
    padded[image, rank] = boxes
    return padded
