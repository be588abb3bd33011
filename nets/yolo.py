"""YOLOv4-tiny body with an optional attention block on feat1, feat2 and the upsampled P5."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nets.attention import attention_name, create_attention
from nets.backbone import BasicConv, CSPDarknet53Tiny
from utils.errors import ConfigError

# Output stride of each head, in the order YoloBody.forward returns them: P5 on the backbone's 1/32 map, then P4 on
# its 1/16 map (tests/test_model.py checks this against real outputs). The one definition the loss, decoding, heat
# maps and export use, through YoloBody.strides or ModelConfig.strides.
HEAD_STRIDES = (32, 16)
STRIDE = max(HEAD_STRIDES)  # the coarsest head's stride: inputs must be a multiple of it


class Upsample(nn.Module):
    """1x1 conv to fewer channels, then nearest-neighbour x2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.Sequential(BasicConv(in_channels, out_channels, 1),
                                      nn.Upsample(scale_factor=2, mode="nearest"))

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
    """YOLOv4-tiny. Returns one output per head, in `strides` order (stride 32, then 16), each
    Tensor[B, len(mask) * (5 + nc), H / stride, W / stride].

    `phi` is 0..3 or a name from nets.attention.ATTENTION_NAMES (none, se, cbam, eca). The model knows its structure:
    `strides`, `head_output_convs()` and `initialize_biases()` are what the loss, engine and exporters ask it.
    """

    def __init__(self, anchors_mask: list[list[int]], num_classes: int, phi: int | str = 0):
        super().__init__()
        if len(anchors_mask) != len(HEAD_STRIDES):
            raise ConfigError(f"anchors_mask {anchors_mask} has {len(anchors_mask)} masks; this model has "
                              f"{len(HEAD_STRIDES)} heads and needs one mask per head")
        self.attention = attention_name(phi)
        self.num_classes = num_classes
        self.strides: tuple[int, ...] = HEAD_STRIDES
        self.backbone = CSPDarknet53Tiny()
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = yolo_head((512, len(anchors_mask[0]) * (5 + num_classes)), 256)
        self.upsample = Upsample(256, 128)
        self.yolo_headP4 = yolo_head((256, len(anchors_mask[1]) * (5 + num_classes)), 384)
        # For "none" these are nn.Identity: forward() stays branch-free and the state_dict gains no entries.
        self.feat1_att = create_attention(self.attention, 256)
        self.feat2_att = create_attention(self.attention, 512)
        self.upsample_att = create_attention(self.attention, 128)

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

    def head_output_convs(self) -> list[nn.Conv2d]:
        """The plain 1x1 convolution that ends each head (its raw anchor outputs), in `strides` order."""
        return [self.yolo_headP5[1], self.yolo_headP4[1]]

    @torch.no_grad()
    def initialize_biases(self, input_shape: Sequence[int]) -> None:
        """Start objectness near its true rate (a few objects per image) instead of 0.5 everywhere, and the class
        outputs near a uniform prior. Training from scratch otherwise spends its first epochs just learning that
        almost every cell is background (YOLOv5's Model._initialize_biases, YOLOX's initialize_biases)."""
        for conv, stride in zip(self.head_output_convs(), self.strides, strict=True):
            cells = (input_shape[0] / stride) * (input_shape[1] / stride)
            bias = conv.bias.view(conv.out_channels // (5 + self.num_classes), -1)  # [anchors, 5 + nc]
            bias[:, 4] = math.log(8 / cells)
            bias[:, 5:] = math.log(0.6 / max(self.num_classes - 0.99, 1.0))
