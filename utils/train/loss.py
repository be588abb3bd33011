"""YOLOv4-tiny training loss: CIoU box, objectness and class BCE per head, as the reference implementation weighs them.

Reference: bubbliiiing/yolov4-tiny-pytorch `nets/yolo_training.py` (YOLOLoss). Same assignment, ignore rule, reductions
and weights, but vectorised over ground truths, with label smoothing that is really applied, and the input size read
from the head shapes so multi-scale batches get the right strides and objectness weight.
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

# Objectness weight of a head by its stride: the reference's 0.4 for stride 32 (13x13 at 416) and 1.0 for stride 16;
# 4.0 for stride 8 is YOLOv5's value for P3, for a three-head variant.
HEAD_BALANCE = {32: 0.4, 16: 1.0, 8: 4.0}
BOX_RATIO = 0.05


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


class YoloLoss(nn.Module):
    """Called as loss(outputs, targets) -> {"box", "obj", "cls", "total"} (float32 scalars, box + obj + cls == total).

    outputs: YoloBody's heads in config.strides order (stride 32, then 16), each Tensor[B, A*(5+nc), H, W], any dtype.
    targets: Tensor[M, 6] rows (image index in batch, class, x1, y1, x2, y2) in pixels of this batch's input size.

    Per head, on the positives (each ground truth at its assigned anchor and cell, see `_positives`): box = mean of
    (1 - CIoU) between decoded prediction and ground truth; cls = mean over positives and classes of BCE-with-logits
    against y * (1 - eps) + eps / nc (eps = label_smoothing). obj = mean BCE-with-logits over positives (target 1) and
    negatives (target 0), leaving out negatives whose decoded box has IoU > ignore_threshold with a ground truth of the
    same image. Totals: box = 0.05 * sum of heads, cls = nc / 80 * sum, obj = 5 * (h * w / 416^2) * sum of
    HEAD_BALANCE[stride_l] * obj_l. As in the reference, the head balance weighs only the objectness term.
    """

    def __init__(self, config: ModelConfig, label_smoothing: float = 0.0, ignore_threshold: float = 0.5):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing {label_smoothing} (--label-smoothing) must be in [0, 1)")
        self.anchors_mask = [list(m) for m in config.anchors_mask]
        self.num_classes = config.num_classes
        self.scale_x_y = config.scale_x_y
        self.label_smoothing = label_smoothing
        self.ignore_threshold = ignore_threshold
        self.strides = tuple(config.strides)
        self.balance = [HEAD_BALANCE[stride] for stride in self.strides]
        self.box_ratio = BOX_RATIO
        self.cls_ratio = config.num_classes / 80
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
        obj_ratio = 5 * input_hw[0] * input_hw[1] / 416 ** 2
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
        # M rows of the others, so a (free, also for channels_last) view is enough.
        pred = output.reshape(b, a, 5 + self.num_classes, h, w)  # [B, A, 5+nc, H, W]
        stride = output.new_full((2,), input_hw[1] / w)  # (x, y) px per cell; filled on device, no copy
        stride[1] = input_hw[0] / h
        anchors = self.anchors[getattr(self, f"mask{head}")]  # [A, 2]
        positive, cell, slot, target = self._positives(gt, head, (b, a, h, w), stride)
        p = pred[gt.image.clamp(0, b - 1), slot, :, cell[:, 1], cell[:, 0]]  # [M, 5+nc], one row per ground truth
        n = positive.sum().clamp(min=1)
        box = decode_boxes(p[:, :4], cell, anchors[slot], stride, self.scale_x_y)
        # Rows that are not positives (maybe degenerate boxes) are compared with their own detached prediction, so
        # CIoU and its gradient stay finite before torch.where drops them.
        safe = torch.where(positive[:, None], gt.boxes, box.detach())
        box_loss = torch.where(positive, complete_box_iou_loss(box, safe), 0.0).sum() / n
        onehot = p.new_zeros((len(p), self.num_classes)).scatter_(1, gt.cls[:, None], 1.0)
        smoothed = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes  # y(1-eps) + eps/nc
        cls_bce = F.binary_cross_entropy_with_logits(p[:, 5:], smoothed, reduction="none").sum(dim=1)
        cls_loss = torch.where(positive, cls_bce, 0.0).sum() / (n * self.num_classes)
        ignored = self._ignored(pred[:, :, :4].permute(0, 1, 3, 4, 2), gt.padded, anchors, stride)
        weight = (target | ~ignored).float()  # positives and the negatives that are not ignored
        obj_loss = F.binary_cross_entropy_with_logits(pred[:, :, 4], target.float(), weight=weight,
                                                      reduction="sum") / weight.sum().clamp(min=1)
        return box_loss, obj_loss, cls_loss

    def _positives(self, gt: BatchTargets, head: int, shape: tuple[int, int, int, int], stride: torch.Tensor):
        """Which ground truths are positives of this head, and where.

        Returns positive Tensor[M] bool, cell Tensor[M, 2] long (i, j) = floor(centre / stride) clamped to the grid,
        slot Tensor[M] long (anchor position in this head's mask; 0 where unused) and the objectness target
        Tensor[B, A, H, W] bool. A box whose best anchor is in both masks (anchor 3) is a positive of both heads.
        When several boxes share image, cell and anchor the LAST row of targets wins (as the reference's overwrite).
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
        positive = candidate & (winner[key] == row)
        return positive, cell, slot, (winner >= 0).view(b, a, h, w)

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
