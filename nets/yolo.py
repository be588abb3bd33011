"""YOLOv4-tiny body with an optional attention block on feat1, feat2 and the upsampled P5."""
from __future__ import annotations

import torch
from torch import nn

from nets.attention import attention_name, create_attention
from nets.backbone import BasicConv, CSPDarknet53Tiny
from utils.errors import ConfigError

STRIDE = 32  # the coarsest head's stride: inputs must be a multiple of it


class Upsample(nn.Module):
    """1x1 conv to fewer channels, then nearest-neighbour x2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.Sequential(BasicConv(in_channels, out_channels, 1), nn.Upsample(scale_factor=2, mode="nearest"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


def yolo_head(channels: tuple[int, int], in_channels: int) -> nn.Sequential:
    """3x3 BasicConv then a plain 1x1 conv with bias that predicts the raw anchor outputs."""
    return nn.Sequential(BasicConv(in_channels, channels[0], 3), nn.Conv2d(channels[0], channels[1], 1))


def check_input_size(height: int, width: int) -> None:
    """Raise ConfigError (a ValueError) unless both sides are positive multiples of 32."""
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise ConfigError(
            f"input size {height}x{width} is not a multiple of {STRIDE}; use e.g. 320, 416, 512 or 608")


class YoloBody(nn.Module):
    """YOLOv4-tiny. Returns (out0, out1): the stride-32 and stride-16 heads, each len(mask) * (5 + nc) channels.

    `phi` is 0..3 or a name from nets.attention.ATTENTION_NAMES (none, se, cbam, eca).
    """

    def __init__(self, anchors_mask: list[list[int]], num_classes: int, phi: int | str = 0):
        super().__init__()
        self.attention = attention_name(phi)
        self.num_classes = num_classes
        self.backbone = CSPDarknet53Tiny()
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = yolo_head((512, len(anchors_mask[0]) * (5 + num_classes)), 256)
        self.upsample = Upsample(256, 128)
        self.yolo_headP4 = yolo_head((256, len(anchors_mask[1]) * (5 + num_classes)), 384)
        if self.attention != "none":
            self.feat1_att = create_attention(self.attention, 256)
            self.feat2_att = create_attention(self.attention, 512)
            self.upsample_att = create_attention(self.attention, 128)
        else:  # Identity keeps forward() branch-free and adds no state_dict entries.
            self.feat1_att = self.feat2_att = self.upsample_att = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input_size(x.shape[-2], x.shape[-1])
        feat1, feat2 = self.backbone(x)  # 256/16, 512/32
        feat1, feat2 = self.feat1_att(feat1), self.feat2_att(feat2)
        p5 = self.conv_for_P5(feat2)  # 512->256/32
        out0 = self.yolo_headP5(p5)  # 256->512->A(5+nc)/32
        p5_up = self.upsample_att(self.upsample(p5))  # 256->128/16
        p4 = torch.cat([p5_up, feat1], dim=1)  # 128+256=384/16
        out1 = self.yolo_headP4(p4)  # 384->256->A(5+nc)/16
        return out0, out1
