"""Attention blocks for the YOLOv4-tiny neck, chosen by name through `create_attention`.

Every block takes ``channels`` first and returns a tensor shaped like its input. Parameter names
follow the widely used reference implementation so weights move between the two with strict=True.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from utils.errors import ConfigError


class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al., 2018, arXiv:1709.01507): global average pool, two linear layers."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * weights


class ChannelAttention(nn.Module):
    """CBAM channel branch: average- and max-pooled descriptors through one shared MLP (1x1 convs)."""

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """CBAM spatial branch: channel-wise mean and max, stacked, one k x k conv to a single map."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size not in (3, 7):
            raise ValueError(f"CBAM spatial kernel must be 3 or 7, got {kernel_size}")
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out = torch.amax(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


class CBAMBlock(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018, arXiv:1807.06521): channel, then spatial."""

    def __init__(self, channels: int, ratio: int = 8, kernel_size: int = 7):
        super().__init__()
        self.channelattention = ChannelAttention(channels, ratio=ratio)
        self.spatialattention = SpatialAttention(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channelattention(x)
        return x * self.spatialattention(x)


def eca_kernel_size(channels: int, b: int = 1, gamma: int = 2) -> int:
    """ECA's adaptive 1D kernel size: |log2(C) + b| / gamma, truncated, forced odd."""
    k = int(abs((math.log(channels, 2) + b) / gamma))
    return k if k % 2 else k + 1


class ECABlock(nn.Module):
    """Efficient Channel Attention (Wang et al., 2020, arXiv:1910.03151): a 1D conv across pooled channels."""

    def __init__(self, channels: int, b: int = 1, gamma: int = 2):
        super().__init__()
        k = eca_kernel_size(channels, b, gamma)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)  # B,C,1,1
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)  # conv over channels
        return x * self.sigmoid(y)


# The registry: a new attention block is one class plus one entry here.
# The order gives the command-line index `phi` (0 none, 1 SE, 2 CBAM, 3 ECA).
ATTENTION_BLOCKS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "se": SEBlock,
    "cbam": CBAMBlock,
    "eca": ECABlock,
}
ATTENTION_NAMES = tuple(ATTENTION_BLOCKS)


def attention_name(phi: int | str) -> str:
    """Map `phi` (an index 0..3 or a name, any case) to the attention's registry name."""
    valid = ", ".join(f"{i}/{n}" for i, n in enumerate(ATTENTION_NAMES))
    if isinstance(phi, bool):
        raise ConfigError(f"invalid attention {phi!r}; valid values: {valid}")
    if isinstance(phi, int):
        if 0 <= phi < len(ATTENTION_NAMES):
            return ATTENTION_NAMES[phi]
        raise ConfigError(f"invalid phi {phi}; valid values: {valid}")
    text = str(phi).strip().lower()
    if text.isdigit():
        return attention_name(int(text))
    if text in ATTENTION_BLOCKS:
        return text
    raise ConfigError(f"invalid attention {phi!r}; valid values: {valid}")


def create_attention(name: int | str, channels: int) -> nn.Module:
    """Build the attention block `name` for a feature map with `channels` channels (nn.Identity for none)."""
    block = ATTENTION_BLOCKS[attention_name(name)]
    return nn.Identity() if block is None else block(channels)
