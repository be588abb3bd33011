"""YOLOv4-tiny body with two heads (strides 32, 16) or three (+ stride 8, Darknet's yolov4-tiny-3l), and attention
blocks in the neck (the reference's places), inside the backbone, or both."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from nets.attention import AttentionBlock, attention_name, create_attention, identify_block, option_text
from nets.backbone import BasicConv, CSPDarknet53Tiny
from nets.errors import ModelConfigError

# Darknet's yolov4-tiny.cfg anchors (w, h in input pixels at 416): the one source of the default, copied into every
# checkpoint's ModelConfig so a trained model never depends on it.
# `python -m utils.anchors` fits anchors to a dataset.
DEFAULT_ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
# Darknet's yolov4-tiny.cfg: the stride-32 head uses anchors 3,4,5 and the stride-16 head 1,2,3.
DEFAULT_ANCHORS_MASK = [[3, 4, 5], [1, 2, 3]]
# Darknet's yolov4-tiny-3l.cfg anchors are for its 608-pixel input. Anchors are input pixels and do not follow the
# input size (in Darknet as here), so the three-head default is them scaled by 416 / 608 and rounded: the size the
# two-head defaults are for, and the relative sizes Darknet meant (its largest anchor covers 0.75 of either input).
DARKNET_3L_ANCHORS_608 = [[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110], [192, 243],
                          [459, 401]]
DEFAULT_ANCHORS_3L = [[round(w * 416 / 608), round(h * 416 / 608)] for w, h in DARKNET_3L_ANCHORS_608]
# Darknet's yolov4-tiny-3l.cfg masks, in our head order (stride 32, 16, 8).
DEFAULT_ANCHORS_MASK_3L = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


@dataclass(frozen=True)
class HeadLayout:
    """What a head count means: each head's output stride, in the order YoloBody.forward returns them (the one
    definition the loss, decoding, heat maps and export use, through YoloBody.strides or ModelConfig.strides), and
    the default anchors (w, h input px) and masks."""

    strides: tuple[int, ...]
    anchors: list[list[int]]
    anchors_mask: list[list[int]]


# P5 on the backbone's 1/32 map, P4 on its 1/16 map, P3 (three heads) on its 1/8 map; tests/test_model.py checks the
# strides against real outputs.
HEAD_LAYOUTS = {2: HeadLayout((32, 16), DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK),
                3: HeadLayout((32, 16, 8), DEFAULT_ANCHORS_3L, DEFAULT_ANCHORS_MASK_3L)}
STRIDE = 32  # the coarsest head's stride, the same for every layout: inputs must be a multiple of it


def head_layout(heads: int) -> HeadLayout:
    """The layout of a model with `heads` heads (2 or 3); a ModelConfigError naming --heads otherwise."""
    if isinstance(heads, bool) or heads not in HEAD_LAYOUTS:
        raise ModelConfigError(f"invalid --heads {heads!r}; valid values: {', '.join(map(str, HEAD_LAYOUTS))} "
                               "(3 adds a stride-8 head for small objects, as Darknet's yolov4-tiny-3l)")
    return HEAD_LAYOUTS[heads]


def heads_in_state_dict(state_dict: dict[str, Any]) -> int:
    """How many heads a YoloBody state_dict (ours or the reference layout) has: 3 when it holds the P3 head."""
    return 3 if any(key.startswith("yolo_headP3.") for key in state_dict) else 2

# The largest input side: a forward pass at 4096 x 4096 already needs about 2 GB of activations per image (8192 would
# need four times that before the first head), far beyond what a YOLOv4-tiny is for.
MAX_INPUT_SIDE = 4096
# The most classes: each head predicts 3 x (5 + classes) channels, so 10,000 classes already make heads of ~25 M
# parameters (300,000 would take 3.5 GB to build); detection datasets have tens to about a thousand (LVIS).
MAX_CLASSES = 10_000

# Where attention goes (--attention-at). neck: feat1, feat2 and the upsampled P5, as the reference (its state_dict
# layout), and with three heads also the stride-8 feature and the upsampled P4; backbone: inside each CSP stage
# (nets.backbone.ResblockBody); both: the two together.
ATTENTION_PLACES = ("neck", "backbone", "both")


def attention_place(at: str) -> str:
    """Validate --attention-at."""
    text = str(at).strip().lower()
    if text not in ATTENTION_PLACES:
        raise ModelConfigError(f"invalid --attention-at {at!r}; valid values: {', '.join(ATTENTION_PLACES)}")
    return text


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
    """Raise ModelConfigError (a ValueError) unless both sides are positive multiples of 32, at most MAX_INPUT_SIDE."""
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise ModelConfigError(
            f"input size {height}x{width} is not a multiple of {STRIDE}; use e.g. 320, 416, 512 or 608")
    if max(height, width) > MAX_INPUT_SIDE:
        raise ModelConfigError(f"input size {height}x{width} is larger than {MAX_INPUT_SIDE} on a side (a forward "
                               f"pass would need tens of GB); use e.g. 416, 640 or 1280")


class YoloBody(nn.Module):
    """YOLOv4-tiny with one head per anchor mask: two (strides 32, 16; the reference layout) or three (+ stride 8,
    Darknet's yolov4-tiny-3l). Returns one output per head, in `strides` order, each
    Tensor[B, len(mask) * (5 + nc), H / stride, W / stride].

    `phi` is an index or a registered name (nets.attention: none, se, cbam, eca, ca, ...); `attention_at` one of
    ATTENTION_PLACES; `attention_options` the block's options (nets.attention.block_options; absent: its defaults).
    The model knows its structure: `strides`, `head_output_convs()`, `initialize_biases()`, `attention_blocks()`,
    `freeze_backbone()`, `attention_mismatch()` and `heads_mismatch()` are what the loss, engine, checkpoint loader
    and exporters ask it.
    """

    def __init__(self, anchors_mask: list[list[int]], num_classes: int, phi: int | str = 0, attention_at: str = "neck",
                 **attention_options: Any):
        super().__init__()
        if len(anchors_mask) not in HEAD_LAYOUTS:
            raise ModelConfigError(f"anchors_mask {anchors_mask} has {len(anchors_mask)} masks; this model has "
                                   f"{' or '.join(map(str, HEAD_LAYOUTS))} heads and needs one mask per head")
        self.attention = attention_name(phi)
        self.attention_at = attention_place(attention_at) if self.attention != "none" else "neck"
        self.num_classes = num_classes
        self.strides: tuple[int, ...] = HEAD_LAYOUTS[len(anchors_mask)].strides
        self._block_options = attention_options
        in_backbone = self.attention != "none" and self.attention_at in ("backbone", "both")
        in_neck = self.attention != "none" and self.attention_at in ("neck", "both")
        outputs = [len(mask) * (5 + num_classes) for mask in anchors_mask]
        self.backbone = CSPDarknet53Tiny(self._backbone_block if in_backbone else None)
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = yolo_head((512, outputs[0]), 256)
        self.upsample = Upsample(256, 128)
        self.yolo_headP4 = yolo_head((256, outputs[1]), 384)
        # Identity keeps forward() branch-free and adds no state_dict entries.
        self.feat1_att = self._new_block(256) if in_neck else nn.Identity()
        self.feat2_att = self._new_block(512) if in_neck else nn.Identity()
        self.upsample_att = self._new_block(128) if in_neck else nn.Identity()
        if len(self.strides) == 3:  # built after the two-head layers, so those start alike for a given seed
            self.upsample_P3 = Upsample(256, 64)
            self.yolo_headP3 = yolo_head((128, outputs[2]), 192)
            self.feat0_att = self._new_block(128) if in_neck else nn.Identity()
            self.upsample_P3_att = self._new_block(64) if in_neck else nn.Identity()

    def _new_block(self, channels: int) -> nn.Module:
        # A forked RNG: the layers every variant shares get the same initial weights for a given seed whatever the
        # attention and its placement, so an ablation compares attention, not initialisation luck.
        with torch.random.fork_rng(devices=[]):
            return create_attention(self.attention, channels, **self._block_options)

    def _backbone_block(self, channels: int) -> nn.Module:
        # Backbone blocks start as the identity (2 x sigmoid gates over zeroed gate layers): they are usually inserted
        # into a pretrained backbone, whose features fresh 0.5-gates would halve at every stage. Neck blocks keep the
        # reference's plain sigmoid and PyTorch's default initialisation, so reference weights mean the same.
        block = self._new_block(channels)
        block.start_as_identity()
        return block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_input_size(x.shape[-2], x.shape[-1])
        feat0, feat1, feat2 = self.backbone(x)  # 128/8, 256/16, 512/32
        feat1, feat2 = self.feat1_att(feat1), self.feat2_att(feat2)
        p5 = self.conv_for_P5(feat2)  # 512->256/32
        out0 = self.yolo_headP5(p5)  # 256->512->A(5+nc)/32
        p5_up = self.upsample_att(self.upsample(p5))  # 256->128/16
        p4 = self.yolo_headP4[0](torch.cat([p5_up, feat1], dim=1))  # 128+256=384->256/16
        out1 = self.yolo_headP4[1](p4)  # 256->A(5+nc)/16
        if len(self.strides) == 2:
            return out0, out1
        # yolov4-tiny-3l: the P4 head's 3x3 output (Darknet's `route -3`), upsampled onto the stride-8 CSP feature
        p4_up = self.upsample_P3_att(self.upsample_P3(p4))  # 256->64/8
        p3 = torch.cat([p4_up, self.feat0_att(feat0)], dim=1)  # 64+128=192/8
        return out0, out1, self.yolo_headP3(p3)  # 192->128->A(5+nc)/8

    def attention_blocks(self) -> dict[str, AttentionBlock]:
        """Every attention block by its module name (e.g. 'feat1_att', 'backbone.resblock_body2.feat_att')."""
        return {name: module for name, module in self.named_modules() if isinstance(module, AttentionBlock)}

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the backbone's pretrained layers; attention blocks inside it always train, since they
        are the new part of a model fine-tuned from a plain pretrained backbone."""
        self.backbone.requires_grad_(not frozen)
        for block in self.backbone.modules():
            if isinstance(block, AttentionBlock):
                block.requires_grad_(True)

    def attention_mismatch(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        """Why `state_dict`'s attention blocks do not fit this model, naming the option to change; None if they fit."""
        return attention_mismatch(self, state_dict)

    def heads_mismatch(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        """Why `state_dict` does not fit this model's head count, naming --heads; None if the counts agree."""
        theirs = heads_in_state_dict(state_dict)
        if theirs == len(self.strides):
            return None
        return f"the weights have {theirs} heads (--heads {theirs}) but this model has {len(self.strides)}"

    def head_output_convs(self) -> list[nn.Conv2d]:
        """The plain 1x1 convolution that ends each head (its raw anchor outputs), in `strides` order."""
        heads = [self.yolo_headP5, self.yolo_headP4] + ([self.yolo_headP3] if len(self.strides) == 3 else [])
        return [head[1] for head in heads]

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


def attention_prefixes(keys) -> list[str]:
    """Module names of attention blocks among state_dict keys: every block's name ends in '_att' (feat1_att,
    backbone.resblock_body1.feat_att, ...)."""
    prefixes = []
    for key in keys:
        parts = key.split(".")
        ends = [i for i, part in enumerate(parts[:-1]) if part.endswith("_att")]
        if ends and (prefix := ".".join(parts[:ends[0] + 1])) not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _block_entries(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}


def _placement(prefixes: list[str]) -> str | None:
    places = {"backbone" if p.startswith("backbone.") else "neck" for p in prefixes}
    return "both" if len(places) == 2 else next(iter(places), None)


def _placement_text(at: str | None) -> str:
    if at is None:
        return "no attention blocks (--phi none)"
    where = "the neck and the backbone" if at == "both" else f"the {at}"
    return f"attention blocks in {where} (--attention-at {at})"


def attention_mismatch(model: YoloBody, state_dict: dict[str, torch.Tensor]) -> str | None:
    """Compare the attention blocks found in `state_dict` (type, options, placement) with `model`'s."""
    ours = model.attention_blocks()
    found = {prefix: identify_block(_block_entries(state_dict, prefix)) for prefix in attention_prefixes(state_dict)}
    theirs_at, ours_at = _placement(list(found)), _placement(list(ours))
    if theirs_at != ours_at:
        return f"the weights have {_placement_text(theirs_at)} but this model has {_placement_text(ours_at)}"
    for prefix, identity in found.items():
        block = ours.get(prefix)
        mine = identify_block(block.state_dict()) if block is not None else None
        if identity is None or mine is None:
            continue
        if identity[0] != mine[0]:
            return (f"the weights hold {identity[0]} attention blocks (--phi {identity[0]}) but this model has "
                    f"{mine[0]} blocks (--phi {mine[0]})")
        differing = [k for k in identity[1] if identity[1][k] != mine[1].get(k)]
        if differing:
            options = ", ".join(f"{option_text(k, identity[1][k])} (this model: {mine[1].get(k)})" for k in differing)
            return f"the weights' attention blocks were built with {options}; build the model with the same options"
    return None
