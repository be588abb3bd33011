"""Attention blocks for YOLOv4-tiny, chosen by name through `create_attention`.

Every block takes ``channels`` first, multiplies one or more gates onto its input and returns a tensor shaped like it.
Parameter names follow the widely used reference implementation so weights move between the two with strict=True.

Options (stored in the ModelConfig, set with train.py flags): `reduction`, the hidden-width divisor of SE, CBAM's
channel branch and coordinate attention (--attention-reduction), and CBAM's spatial `kernel_size` (--cbam-kernel).
The defaults are the reference layout's. `gain` scales every sigmoid gate: 1 is the papers' block; 2 with the gate
layers zeroed (`start_as_identity`) makes a block that starts as the identity (see nets/yolo.py, backbone placement).
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nets.errors import ModelConfigError

# The command-line flag behind each block option, for messages.
OPTION_FLAGS = {"reduction": "--attention-reduction", "kernel_size": "--cbam-kernel"}


def hidden_width(channels: int, reduction: int, minimum: int = 0) -> int:
    """max(channels // reduction, minimum); a ModelConfigError naming the flag when no channel would be left."""
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
        raise ModelConfigError(f"{OPTION_FLAGS['reduction']} must be a positive integer, got {reduction!r}")
    width = max(channels // reduction, minimum)
    if width < 1:
        raise ModelConfigError(f"{OPTION_FLAGS['reduction']} {reduction} leaves no hidden channel in a "
                               f"{channels}-channel attention block; use at most {channels}")
    return width


def reduction_of(weight: torch.Tensor) -> int:
    """The reduction ratio C // hidden of a squeeze layer's weight, [hidden, C] or [hidden, C, 1, 1]."""
    return max(weight.shape[1] // max(weight.shape[0], 1), 1)


def channel_energy(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Where a channel gate puts its weight: mean over channels of (w_c * x_c)^2, [B, h, w]."""
    return (x * weights).float().square().mean(dim=1)


class AttentionBlock(nn.Module):
    """Shared interface: `attention_map(x)` [B, h, w] for visualisation, `start_as_identity()` for insertion into a
    trained network. Subclasses list the layers whose outputs feed a sigmoid gate in `gate_layers()`."""

    map_kind = "attention"  # what attention_map shows, for captions

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = float(gain)

    def gate_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    @staticmethod
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
        """The options a block's state_dict entries (keys relative to the block) were built with."""
        return {}

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """Zero the gate layers and use 2 x sigmoid gates: every gate is exactly 1 until training moves it, so a
        block inserted into a trained network leaves its features untouched at step 0 (the NFNet SE recipe, Brock et
        al. 2021). The gate layers still get gradients at once: d gate / d W = 2 sigmoid'(0) x input != 0."""
        for layer in self.gate_layers():
            nn.init.zeros_(layer.weight)
        self.gain = 2.0

    def extra_repr(self) -> str:
        return f"gain={self.gain:g}" if self.gain != 1.0 else ""


class SEBlock(AttentionBlock):
    """Squeeze-and-Excitation (Hu et al., 2018, arXiv:1709.01507): global average pool, two linear layers."""

    map_kind = "channel-weighted energy"

    def __init__(self, channels: int, reduction: int = 16, gain: float = 1.0):
        super().__init__(gain)
        hidden = hidden_width(channels, reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return self.gain * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)

    def gate_layers(self) -> list[nn.Module]:
        return [self.fc[2]]

    @staticmethod
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"reduction": reduction_of(tensors["fc.0.weight"])}

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return channel_energy(x, self.channel_weights(x))


class ChannelAttention(nn.Module):
    """CBAM channel branch: average- and max-pooled descriptors through one shared MLP (1x1 convs)."""

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        hidden = hidden_width(channels, ratio)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
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
            raise ModelConfigError(f"{OPTION_FLAGS['kernel_size']} must be 3 or 7, got {kernel_size}")
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out = torch.amax(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


class CBAMBlock(AttentionBlock):
    """Convolutional Block Attention Module (Woo et al., 2018, arXiv:1807.06521): channel, then spatial.

    Reference layout: channel reduction 8, spatial kernel 7 (the paper's; seed 004 argues for 3)."""

    map_kind = "spatial gate"

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7, gain: float = 1.0):
        super().__init__(gain)
        self.channelattention = ChannelAttention(channels, ratio=reduction)
        self.spatialattention = SpatialAttention(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * (self.gain * self.channelattention(x))
        return x * (self.gain * self.spatialattention(x))

    def gate_layers(self) -> list[nn.Module]:
        return [self.channelattention.fc2, self.spatialattention.conv1]

    @staticmethod
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"reduction": reduction_of(tensors["channelattention.fc1.weight"]),
                "kernel_size": int(tensors["spatialattention.conv1.weight"].shape[-1])}

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate (what CBAM multiplies onto each position), [B, h, w]."""
        x = x * (self.gain * self.channelattention(x))
        return self.gain * self.spatialattention(x)[:, 0]


def eca_kernel_size(channels: int, b: int = 1, gamma: int = 2) -> int:
    """ECA's adaptive 1D kernel size: |log2(C) + b| / gamma, truncated, forced odd."""
    k = int(abs((math.log(channels, 2) + b) / gamma))
    return k if k % 2 else k + 1


class ECABlock(AttentionBlock):
    """Efficient Channel Attention (Wang et al., 2020, arXiv:1910.03151): a 1D conv across pooled channels.

    No reduction: the kernel size adapts to the channel count (`eca_kernel_size`)."""

    map_kind = "channel-weighted energy"

    def __init__(self, channels: int, b: int = 1, gamma: int = 2, gain: float = 1.0):
        super().__init__(gain)
        k = eca_kernel_size(channels, b, gamma)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)  # B,C,1,1
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)  # conv over channels
        return self.gain * self.sigmoid(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)

    def gate_layers(self) -> list[nn.Module]:
        return [self.conv]

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return channel_energy(x, self.channel_weights(x))


# Coordinate attention's hidden width is max(CA_MIN_HIDDEN, C // reduction), as in the official CoordAtt code. The
# reference layout (shared/reference/state_dict_phi4_ca_*.txt) has 256 -> 16, 512 -> 32 and 128 -> 8 hidden channels:
# exactly C // 16 for all three, so its reduction is 16 and the minimum (if any) is at most 8, where it never binds.
# We keep 8 so that a larger --attention-reduction cannot squeeze the shared 1x1 conv below 8 channels.
CA_MIN_HIDDEN = 8


class CoordinateAttention(AttentionBlock):
    """Coordinate attention (Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907), reference layout (reduction 16, ReLU).

    Average-pool along the width and along the height, concatenate, 1x1 conv + BN + ReLU, split, one 1x1 conv per
    direction, and multiply the two sigmoid gates (height [B,C,H,1] and width [B,C,1,W]) onto the input."""

    map_kind = "h x w gate product"

    def __init__(self, channels: int, reduction: int = 16, gain: float = 1.0):
        super().__init__(gain)
        hidden = hidden_width(channels, reduction, minimum=CA_MIN_HIDDEN)
        self.conv_1x1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU()
        self.F_h = nn.Conv2d(hidden, channels, 1, bias=False)
        self.F_w = nn.Conv2d(hidden, channels, 1, bias=False)
        self.sigmoid_h = nn.Sigmoid()
        self.sigmoid_w = nn.Sigmoid()

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(height gate [B, C, H, 1], width gate [B, C, 1, W])."""
        height, width = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True).permute(0, 1, 3, 2)  # B,C,1,H: pooled along the width
        x_w = x.mean(dim=2, keepdim=True)  # B,C,1,W: pooled along the height
        y = self.relu(self.bn(self.conv_1x1(torch.cat([x_h, x_w], dim=3))))  # B,hidden,1,H+W
        y_h, y_w = y.split([height, width], dim=3)
        gate_h = self.gain * self.sigmoid_h(self.F_h(y_h.permute(0, 1, 3, 2)))  # B,C,H,1
        gate_w = self.gain * self.sigmoid_w(self.F_w(y_w))  # B,C,1,W
        return gate_h, gate_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_h, gate_w = self.gates(x)
        return x * gate_h * gate_w

    def gate_layers(self) -> list[nn.Module]:
        return [self.F_h, self.F_w]

    def fuse_conv_bn_(self) -> None:
        """Fold the BatchNorm into conv_1x1 (eval mode only; used by the fast inference path)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv_1x1 = fuse_conv_bn_eval(self.conv_1x1.eval(), self.bn.eval())
            self.bn = nn.Identity()

    @staticmethod
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"reduction": reduction_of(tensors["conv_1x1.weight"])}

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The height x width gate product, averaged over channels, [B, h, w]."""
        gate_h, gate_w = self.gates(x)
        return (gate_h * gate_w).mean(dim=1)


# The registry: a new attention block is one class plus one entry here.
# The order gives the command-line index `phi` (0 none, 1 SE, 2 CBAM, 3 ECA, 4 CA).
ATTENTION_BLOCKS: dict[str, type[AttentionBlock] | None] = {
    "none": None,
    "se": SEBlock,
    "cbam": CBAMBlock,
    "eca": ECABlock,
    "ca": CoordinateAttention,
}
ATTENTION_NAMES = tuple(ATTENTION_BLOCKS)


def attention_name(phi: int | str) -> str:
    """Map `phi` (an index 0..4 or a name, any case) to the attention's registry name."""
    valid = ", ".join(f"{i}/{n}" for i, n in enumerate(ATTENTION_NAMES))
    if isinstance(phi, bool):
        raise ModelConfigError(f"invalid attention {phi!r}; valid values: {valid}")
    if isinstance(phi, int):
        if 0 <= phi < len(ATTENTION_NAMES):
            return ATTENTION_NAMES[phi]
        raise ModelConfigError(f"invalid phi {phi}; valid values: {valid}")
    text = str(phi).strip().lower()
    if text.isdigit():
        return attention_name(int(text))
    if text in ATTENTION_BLOCKS:
        return text
    raise ModelConfigError(f"invalid attention {phi!r}; valid values: {valid}")


def block_options(name: int | str) -> dict[str, object]:
    """The options attention `name` takes, with their reference defaults ({} for none and ECA's only defaults)."""
    block = ATTENTION_BLOCKS[attention_name(name)]
    if block is None:
        return {}
    parameters = inspect.signature(block).parameters
    return {key: parameters[key].default for key in OPTION_FLAGS if key in parameters}


def create_attention(name: int | str, channels: int, reduction: int | None = None, kernel_size: int | None = None,
                     gain: float = 1.0) -> nn.Module:
    """Build the attention block `name` for a feature map with `channels` channels (nn.Identity for none).

    `reduction` / `kernel_size` None mean the block's reference default; giving one to a block without that option
    is a ModelConfigError (a ValueError) naming the flag."""
    name = attention_name(name)
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return nn.Identity()
    given = {k: v for k, v in (("reduction", reduction), ("kernel_size", kernel_size)) if v is not None}
    unsupported = sorted(given.keys() - block_options(name).keys())
    if unsupported:
        raise ModelConfigError(f"attention {name!r} has no {OPTION_FLAGS[unsupported[0]]} option")
    return block(channels, gain=gain, **given)


def identify_block(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, int]] | None:
    """(attention name, options) of one block's state_dict entries (keys relative to the block), from its key set and
    shapes; None when no registered block has exactly these keys. Used to explain why weights do not fit a model."""
    for name, block in ATTENTION_BLOCKS.items():
        if block is None or set(block(64).state_dict()) != set(tensors):
            continue
        return name, block.options_of(tensors)
    return None
