"""CSPDarknet53-tiny, the YOLOv4-tiny backbone (Darknet's yolov4-tiny.cfg layers 0-29)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# Builds an attention block for a feature map with the given channel count (see nets.yolo.YoloBody).
AttentionFactory = Callable[[int], nn.Module]


class BasicConv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + LeakyReLU(0.1), Darknet's `batch_normalize=1 activation=leaky`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(x)))


class ResblockBody(nn.Module):
    """One CSP stage: conv, split, two convs on the second half, concat, 1x1, concat with the stage input, pool.

    Returns the pooled output (2C channels, half the resolution) and the pre-pool feature (C channels).

    With `attention` (backbone placement), the block gates `feat`, the output of the stage's transform branch
    (split -> conv2 -> conv3 -> concat -> conv4), before the CSP merge with `route`, the stage's partial shortcut.
    That is where SE-ResNet puts SE and ResNet-CBAM puts CBAM (seeds 001 and 002): on the residual branch after its
    last conv + BN, before the addition with the identity, so the shortcut passes unchanged. Gating the inner concat
    would only re-weight conv4's input; gating the merged, pooled output would also scale the shortcut and duplicate
    the neck placement. `feat` is also the stage's side output, so stage 3's gated `feat` is the neck's feat1.
    """

    def __init__(self, in_channels: int, out_channels: int, attention: AttentionFactory | None = None):
        super().__init__()
        self.out_channels = out_channels
        half = out_channels // 2
        self.conv1 = BasicConv(in_channels, out_channels, 3)
        self.conv2 = BasicConv(half, half, 3)
        self.conv3 = BasicConv(half, half, 3)
        self.conv4 = BasicConv(out_channels, out_channels, 1)
        self.maxpool = nn.MaxPool2d(2, 2)
        # Identity adds no state_dict entries: without attention the layout is the reference's.
        self.feat_att = attention(out_channels) if attention is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.conv1(x)
        # Darknet's `groups=2 group_id=1`: keep the second half of the channels.
        x = route[:, self.out_channels // 2:]
        route1 = self.conv2(x)
        x = self.conv3(route1)
        feat = self.feat_att(self.conv4(torch.cat([x, route1], dim=1)))  # gated before the merge with route
        return self.maxpool(torch.cat([route, feat], dim=1)), feat


class CSPDarknet53Tiny(nn.Module):
    """Backbone returning feat0 (stride 8, 128 channels: what yolov4-tiny-3l's third head reads), feat1 (stride 16,
    256 channels) and feat2 (stride 32, 512 channels).

    `attention` puts a block inside each of the three CSP stages (64, 128 and 256 channels; see ResblockBody)."""

    def __init__(self, attention: AttentionFactory | None = None):
        super().__init__()
        self.conv1 = BasicConv(3, 32, 3, stride=2)
        self.conv2 = BasicConv(32, 64, 3, stride=2)
        self.resblock_body1 = ResblockBody(64, 64, attention)
        self.resblock_body2 = ResblockBody(128, 128, attention)
        self.resblock_body3 = ResblockBody(256, 256, attention)
        self.conv3 = BasicConv(512, 512, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv1(x)  # 3->32, /2
        x = self.conv2(x)  # 32->64, /4
        x, _ = self.resblock_body1(x)  # 64->128, /8
        x, feat0 = self.resblock_body2(x)  # 128->256, /16; feat0 128 at /8 (Darknet layer 15)
        x, feat1 = self.resblock_body3(x)  # 256->512, /32; feat1 256 at /16 (Darknet layer 23)
        feat2 = self.conv3(x)  # 512->512, /32
        return feat0, feat1, feat2
