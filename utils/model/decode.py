"""Raw head outputs -> boxes: sigmoid/exp decoding on the anchor grid, then class-aware NMS (torchvision)."""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from utils.model.config import ModelConfig

MAX_LOG_WH = 10.0  # exp(10) * anchor is far beyond any image: clamping here only stops inf from a wild logit
# exp(-8) x anchor still differs from the box centre in float32 at pixel coordinates, so x2 - x1 never rounds to 0
# and the loss's CIoU aspect term (w / h) never becomes 0 / 0.
MIN_LOG_WH = -8.0


def make_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Cell offsets as Tensor[1, 1, H, W, 2] (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys), dim=-1).view(1, 1, height, width, 2).float()


def reshape_head(output: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """[B, A*(5+nc), H, W] -> [B, A, H, W, 5+nc]."""
    b, _, h, w = output.shape
    return output.view(b, num_anchors, -1, h, w).permute(0, 1, 3, 4, 2).contiguous()


def decode_boxes(t_xywh: torch.Tensor, grid_xy: torch.Tensor, anchor_wh: torch.Tensor, stride: torch.Tensor,
                 scale_x_y: float = 1.0) -> torch.Tensor:
    """Raw (tx, ty, tw, th) -> (x1, y1, x2, y2) in input pixels; all arguments broadcast. The one box decoding of
    inference, export and the loss.

    Centre = (sigmoid(t) * scale_x_y - (scale_x_y - 1) / 2 + cell) * stride (Darknet's scale_x_y lets centres reach
    cell borders); size = exp(t) * anchor, with tw, th clamped to [MIN_LOG_WH, MAX_LOG_WH] first so that a wild logit
    gives a huge or tiny but finite box, never inf or an empty one.
    """
    xy = (t_xywh[..., :2].sigmoid() * scale_x_y - (scale_x_y - 1) / 2 + grid_xy) * stride
    wh = t_xywh[..., 2:4].clamp(MIN_LOG_WH, MAX_LOG_WH).exp() * anchor_wh
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


def decode_head(output: torch.Tensor, anchors: torch.Tensor, input_shape: tuple[int, int],
                scale_x_y: float = 1.0) -> torch.Tensor:
    """One head -> Tensor[B, A*H*W, 5+nc]: (x1, y1, x2, y2) in input pixels, objectness, class probabilities.

    `anchors` is Tensor[A, 2] (w, h) in input pixels; the stride is the input size over the head's grid size.
    """
    pred = reshape_head(output.float(), anchors.shape[0])
    b, a, h, w, _ = pred.shape
    stride = torch.tensor([input_shape[1] / w, input_shape[0] / h], device=pred.device)
    boxes = decode_boxes(pred[..., :4], make_grid(h, w, pred.device), anchors.to(pred.device).view(1, a, 1, 1, 2),
                         stride, scale_x_y)
    return torch.cat((boxes, pred[..., 4:].sigmoid()), dim=-1).view(b, a * h * w, -1)


def decode_outputs(outputs: tuple[torch.Tensor, ...], config: ModelConfig,
                   input_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """All heads -> Tensor[B, N, 5+nc] (see decode_head); `input_shape` defaults to the config's."""
    input_shape = tuple(input_shape or config.input_shape)
    anchors = torch.tensor(config.anchors, dtype=torch.float32)
    return torch.cat([decode_head(out, anchors[mask], input_shape, config.scale_x_y)
                      for out, mask in zip(outputs, config.anchors_mask, strict=True)], dim=1)


def non_max_suppression(decoded: torch.Tensor, conf_thres: float = 0.5, iou_thres: float = 0.3,
                        max_det: int = 300, agnostic: bool = False,
                        classes: list[int] | None = None) -> list[torch.Tensor]:
    """Per image: Tensor[K, 6] (x1, y1, x2, y2, score, class), score = objectness x best class probability.

    Class-aware through torchvision.ops.batched_nms unless `agnostic`; `classes` keeps only those indices.
    """
    results = []
    for pred in decoded:
        class_prob, class_id = pred[:, 5:].max(dim=1)
        score = pred[:, 4] * class_prob
        keep = score >= conf_thres
        if classes is not None:
            keep &= torch.isin(class_id, torch.as_tensor(classes, device=pred.device))
        boxes, score, class_id = pred[keep, :4], score[keep], class_id[keep]
        groups = torch.zeros_like(class_id) if agnostic else class_id
        order = batched_nms(boxes, score, groups, iou_thres)[:max_det]
        results.append(torch.cat((boxes[order], score[order, None], class_id[order, None].float()), dim=1))
    return results
