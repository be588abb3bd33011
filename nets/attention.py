"""Attention blocks for YOLOv4-tiny and their registry: `create_attention("cbam", 256, kernel_size=3)`.

A block is one class decorated with `@register_attention("name")`, subclassing `AttentionBlock`. It is built as
`Block(channels, **options)`: the keyword parameters of its `__init__` (all but `gain`) are its options and their
defaults are the reference values, so a new block with a new option needs no edit anywhere else. The command line
reaches every option as `--attention-option NAME=VALUE` (train.py; `--attention-reduction N` and `--cbam-kernel K`
are the older spellings of `reduction=N` and `kernel_size=K`), the options are stored in the ModelConfig of every
checkpoint, and `--phi`, the ablation and `nets.summary` list the registered names (see docs/architecture.md, "Add an
attention block").

Every block takes `channels` first, multiplies one or more sigmoid gates onto its input and returns a tensor shaped
like it. Parameter names follow the widely used reference implementation so weights move between the two with
strict=True. `gain` scales every sigmoid gate: 1 is the papers' block; 2 with the gate layers zeroed
(`start_as_identity`) makes a block that starts as the identity (see nets/yolo.py, backbone placement).
"""
from __future__ import annotations

import abc
import inspect
import logging
import math
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nets.errors import ModelConfigError

LOGGER = logging.getLogger(__name__)

# The types an option's default (and so its value) may have: what a checkpoint (weights_only) and args.yaml can hold.
OPTION_TYPES = (bool, int, float, str, type(None))
# Channel count of the block built once to check a set of options before a model is (see check_options).
PROBE_CHANNELS = 512


class AttentionBlock(nn.Module, abc.ABC):
    """The contract of a registered block (checked by `register_attention` and tests/test_attention_registry.py):

    - `__init__(self, channels, <options with defaults>, gain=1.0)`; call `super().__init__(gain)`;
    - `attention_map(x)`: Tensor[B, h, w], what the block applies at each position (predict.py --attention-maps);
    - `gate_layers()`: the layers whose outputs feed a sigmoid gate, each with a `.weight`, so that
      `start_as_identity()` can zero them and a block inserted into a trained network starts as the identity;
    - `options_of(tensors)` (optional): the options its state_dict entries were built with, when the options change
      tensor shapes, so that weights that do not fit can say which option differs.
    """

    name: ClassVar[str] = ""  # set by register_attention
    map_kind: ClassVar[str] = "attention"  # what attention_map shows, for captions
    # Older command-line spellings of some options (option -> flag); every option is also --attention-option NAME=V.
    option_flags: ClassVar[dict[str, str]] = {}

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = float(gain)

    @abc.abstractmethod
    def gate_layers(self) -> list[nn.Module]:
        """The layers whose outputs feed a sigmoid gate (zeroed by start_as_identity)."""

    @abc.abstractmethod
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[B, C, h, w] input -> Tensor[B, h, w], what the block applies at each position."""

    @staticmethod
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The options a block's state_dict entries (keys relative to the block) were built with."""
        return {}

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


# ------------------------------------------------------------------------------------------------------ registry
# Registered blocks in registration order, which gives the command-line index `phi`: 0 none, 1 SE, 2 CBAM, 3 ECA,
# 4 CA (the reference's numbering), then blocks registered later (a file of their own, imported in nets/__init__.py).
ATTENTION_BLOCKS: dict[str, type[AttentionBlock] | None] = {"none": None}
Block = TypeVar("Block", bound=type[AttentionBlock])


def register_attention(name: str) -> Callable[[Block], Block]:
    """Class decorator: make the block an attention choice of every tool under `name` (lower case), after checking
    its contract (`check_block_class`); a name already taken by another class is refused."""
    key = str(name).strip().lower()
    if not key.isidentifier() or key == "none":
        raise ValueError(f"attention name {name!r} must be a Python identifier other than 'none'")

    def register(cls: Block) -> Block:
        check_block_class(cls)
        if ATTENTION_BLOCKS.get(key, cls) is not cls:
            raise ValueError(f"attention {key!r} is already registered ({ATTENTION_BLOCKS[key].__qualname__})")
        cls.name = key
        ATTENTION_BLOCKS[key] = cls
        return cls
    return register


def unregister_attention(name: str) -> None:
    """Remove a registered block (tests register toy blocks and remove them again)."""
    if name == "none":
        raise ValueError("'none' is not a block and cannot be unregistered")
    del ATTENTION_BLOCKS[name]


def _option_parameters(cls: type) -> dict[str, inspect.Parameter]:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
    return {p.name: p for p in parameters[1:] if p.name != "gain"}  # after channels


def check_block_class(cls: type) -> None:
    """The static part of the block contract; a TypeError (a programming error) naming what is missing."""
    if not (isinstance(cls, type) and issubclass(cls, AttentionBlock)):
        raise TypeError(f"{cls!r} is not an AttentionBlock subclass")
    if inspect.isabstract(cls):
        raise TypeError(f"{cls.__qualname__} does not implement {', '.join(sorted(cls.__abstractmethods__))}")
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if not parameters or parameters[0].name != "channels":
        raise TypeError(f"{cls.__qualname__}.__init__ must take `channels` first")
    if "gain" not in {p.name for p in parameters}:
        raise TypeError(f"{cls.__qualname__}.__init__ must take `gain` (passed on to AttentionBlock.__init__)")
    for option in _option_parameters(cls).values():
        if option.kind in (option.VAR_POSITIONAL, option.VAR_KEYWORD) or option.default is option.empty:
            raise TypeError(f"{cls.__qualname__}: option {option.name!r} must be a named parameter with a default")
        if not isinstance(option.default, OPTION_TYPES):
            raise TypeError(f"{cls.__qualname__}: option {option.name!r} has a default of type "
                            f"{type(option.default).__name__}; options are bool, int, float, str or None")
    unknown = sorted(set(cls.option_flags) - set(_option_parameters(cls)))
    if unknown:
        raise TypeError(f"{cls.__qualname__}.option_flags names {unknown}, which are not options of the block")


def attention_names() -> tuple[str, ...]:
    """Every registered attention name, in `phi` order (none first)."""
    return tuple(ATTENTION_BLOCKS)


def __getattr__(name: str) -> Any:
    # ATTENTION_NAMES is computed on access, so that blocks registered after this module was imported appear in it.
    if name == "ATTENTION_NAMES":
        return attention_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def attention_choices() -> str:
    """'0/none, 1/se, 2/cbam, ...': the --phi values, for help texts and messages."""
    return ", ".join(f"{i}/{n}" for i, n in enumerate(ATTENTION_BLOCKS))


def attention_name(phi: int | str) -> str:
    """Map `phi` (an index or a registered name, any case) to the attention's registry name."""
    names = attention_names()
    if isinstance(phi, bool):
        raise ModelConfigError(f"invalid attention {phi!r}; valid values: {attention_choices()}")
    if isinstance(phi, int):
        if 0 <= phi < len(names):
            return names[phi]
        raise ModelConfigError(f"invalid phi {phi}; valid values: {attention_choices()}")
    text = str(phi).strip().lower()
    if text.isdigit():
        return attention_name(int(text))
    if text in ATTENTION_BLOCKS:
        return text
    raise ModelConfigError(f"invalid attention {phi!r}; valid values: {attention_choices()}")


def block_options(name: int | str) -> dict[str, Any]:
    """The options attention `name` takes, with their defaults ({} for none)."""
    block = ATTENTION_BLOCKS[attention_name(name)]
    return {} if block is None else {k: p.default for k, p in _option_parameters(block).items()}


def option_flag(option: str) -> str:
    """The command-line spelling of a block option, for messages: its older flag (--attention-reduction,
    --cbam-kernel) where a block declares one, else --attention-option NAME."""
    for block in ATTENTION_BLOCKS.values():
        if block is not None and option in block.option_flags:
            return block.option_flags[option]
    return f"--attention-option {option}"


def option_text(option: str, value: Any) -> str:
    """'--attention-reduction 4' or '--attention-option alpha=0.5': an option with its value, as typed."""
    flag = option_flag(option)
    return f"{flag}={value}" if flag.startswith("--attention-option") else f"{flag} {value}"


def _convert(option: str, value: Any, default: Any) -> Any:
    """`value` (text from the command line or a plain value) as the type of the option's default."""
    kind = type(default)
    if default is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            number = float(text) if not isinstance(value, bool) else None
            if number is None or not number.is_integer():
                raise ValueError(text)
            return int(number)
        return kind(text)
    except (TypeError, ValueError):
        raise ModelConfigError(f"{option_flag(option)} must be {'an integer' if kind is int else f'a {kind.__name__}'}"
                               f", got {value!r}") from None


def attention_options(name: int | str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The complete options of attention `name`: its defaults, overridden by `given` (None values mean the default;
    text such as the '3' of --attention-option kernel_size=3 becomes the default's type), then checked by building
    the block once (`check_options`).

    An option of another registered block that this one lacks is dropped with a warning, so that one ablation command
    can pass --attention-reduction to SE, CBAM and CA and still run ECA and none; an option that no registered block
    has is a ModelConfigError listing the options there are."""
    name = attention_name(name)
    if given is not None and not isinstance(given, Mapping):
        raise ModelConfigError(f"attention options must be a mapping of option: value, got {type(given).__name__}")
    defaults = block_options(name)
    options = dict(defaults)
    for option, value in (given or {}).items():
        if value is None:
            continue
        if option in defaults:
            options[option] = _convert(option, value, defaults[option])
        elif any(option in block_options(other) for other in ATTENTION_BLOCKS):
            LOGGER.warning("%s ignored: attention %s has no %s option", option_text(option, value), name, option)
        else:
            known = sorted({o for other in ATTENTION_BLOCKS for o in block_options(other)})
            raise ModelConfigError(f"no attention block has an option {option!r}; the options are "
                                   f"{', '.join(known)} (see train.py --help, --attention-option)")
    check_options(name, options)
    return options


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Build attention `name` once, so that a bad option value is one error at configuration time, before any data
    is read. The block's own checks run; a block narrower than PROBE_CHANNELS may still refuse, when built."""
    block = ATTENTION_BLOCKS[attention_name(name)]
    if block is not None:
        with torch.random.fork_rng(devices=[]):  # leave the global RNG as it was
            block(PROBE_CHANNELS, **options)


def create_attention(name: int | str, channels: int, gain: float = 1.0, **options: Any) -> nn.Module:
    """Build the attention block `name` for a feature map with `channels` channels (nn.Identity for none).

    `options` are the block's (None: its default); one the block does not take is a ModelConfigError (a ValueError)
    naming its flag."""
    name = attention_name(name)
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return nn.Identity()
    given = {k: v for k, v in options.items() if v is not None}
    unsupported = sorted(given.keys() - block_options(name).keys())
    if unsupported:
        raise ModelConfigError(f"attention {name!r} has no {option_flag(unsupported[0])} option")
    return block(channels, gain=gain, **given)


def identify_block(tensors: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(attention name, options) of one block's state_dict entries (keys relative to the block), from its key set and
    shapes; None when no registered block has exactly these keys. Used to explain why weights do not fit a model."""
    for name, block in ATTENTION_BLOCKS.items():
        if block is None:
            continue
        with torch.random.fork_rng(devices=[]):
            keys = set(block(64).state_dict())
        if keys == set(tensors):
            return name, block.options_of(tensors)
    return None


# ------------------------------------------------------------------------------------------------------- helpers
def hidden_width(channels: int, reduction: int, minimum: int = 0) -> int:
    """max(channels // reduction, minimum); a ModelConfigError naming the flag when no channel would be left."""
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
        raise ModelConfigError(f"{option_flag('reduction')} must be a positive integer, got {reduction!r}")
    width = max(channels // reduction, minimum)
    if width < 1:
        raise ModelConfigError(f"{option_flag('reduction')} {reduction} leaves no hidden channel in a "
                               f"{channels}-channel attention block; use at most {channels}")
    return width


def reduction_of(weight: torch.Tensor) -> int:
    """The reduction ratio C // hidden of a squeeze layer's weight, [hidden, C] or [hidden, C, 1, 1]."""
    return max(weight.shape[1] // max(weight.shape[0], 1), 1)


def channel_energy(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Where a channel gate puts its weight: mean over channels of (w_c * x_c)^2, [B, h, w]."""
    return (x * weights).float().square().mean(dim=1)


# -------------------------------------------------------------------------------------------------------- blocks
@register_attention("se")
class SEBlock(AttentionBlock):
    """Squeeze-and-Excitation (Hu et al., 2018, arXiv:1709.01507): global average pool, two linear layers."""

    map_kind = "channel-weighted energy"
    option_flags = {"reduction": "--attention-reduction"}

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
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
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
            raise ModelConfigError(f"{option_flag('kernel_size')} must be 3 or 7, got {kernel_size!r}")
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out = torch.amax(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


@register_attention("cbam")
class CBAMBlock(AttentionBlock):
    """Convolutional Block Attention Module (Woo et al., 2018, arXiv:1807.06521): channel, then spatial.

    Reference layout: channel reduction 8, spatial kernel 7 (the paper's; seed 004 argues for 3)."""

    map_kind = "spatial gate"
    option_flags = {"reduction": "--attention-reduction", "kernel_size": "--cbam-kernel"}

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
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
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


@register_attention("eca")
class ECABlock(AttentionBlock):
    """Efficient Channel Attention (Wang et al., 2020, arXiv:1910.03151): a 1D conv across pooled channels.

    No reduction: the kernel size adapts to the channel count (`eca_kernel_size`, with the paper's b and gamma)."""

    map_kind = "channel-weighted energy"

    def __init__(self, channels: int, b: int = 1, gamma: int = 2, gain: float = 1.0):
        super().__init__(gain)
        if gamma < 1:
            raise ModelConfigError(f"{option_flag('gamma')} must be a positive integer, got {gamma!r}")
        k = eca_kernel_size(channels, b, gamma)
        if k > channels:  # also bounds the allocation for options read from an untrusted checkpoint
            raise ModelConfigError(f"{option_text('b', b)} and {option_text('gamma', gamma)} give a {k}-wide ECA "
                                   f"kernel over {channels} channels; keep |log2(C) + b| / gamma below C")
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


@register_attention("ca")
class CoordinateAttention(AttentionBlock):
    """Coordinate attention (Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907), reference layout (reduction 16, ReLU).

    Average-pool along the width and along the height, concatenate, 1x1 conv + BN + ReLU, split, one 1x1 conv per
    direction, and multiply the two sigmoid gates (height [B,C,H,1] and width [B,C,1,W]) onto the input."""

    map_kind = "h x w gate product"
    option_flags = {"reduction": "--attention-reduction"}

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
    def options_of(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"reduction": reduction_of(tensors["conv_1x1.weight"])}

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The height x width gate product, averaged over channels, [B, h, w]."""
        gate_h, gate_w = self.gates(x)
        return (gate_h * gate_w).mean(dim=1)


