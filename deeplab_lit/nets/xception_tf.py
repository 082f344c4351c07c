"""Aligned Xception-65 as TF DeepLab builds it (``research/deeplab/core/xception.py``), in plain PyTorch.

A 3x3/2 (32) → 3x3 (64) stem, then units of three separable convolutions (depthwise 3x3 → BN → pointwise 1x1 →
BN, every BN with epsilon 1e-3): entry flow (128, 256, 728 channels, each unit strided, 1x1 conv shortcut), middle
flow (16 units of 728, identity shortcut), exit flow ((728, 1024, 1024) strided with a 1x1 shortcut, then (1536,
1536, 2048) without one). As ``activation_fn_in_separable_conv=False`` (every unit but the last) each separable conv
starts with a ReLU of its input and has no activation inside, the shortcut reads the unit's input before that ReLU,
and the sum is not followed by a ReLU; the last unit (``True``) has a ReLU after each BN instead. A unit's stride
sits in its third separable conv and its shortcut; strided convs pad explicitly and symmetrically
(``fixed_padding``), which is PyTorch's padding, so no ``SAME`` correction is needed.

Why not timm's ``xception65`` (which this replaces, keeping its feature model's state-dict names, so its ImageNet
weights and earlier checkpoints load): its stem widths are fixed, so no narrow network can be built for a test
fixture, and its stride-4 feature is a hook on an in-place ReLU, so TF DeepLab's decoder end point
(``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``: that BN's output, *before* the ReLU)
cannot be read from it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone, Features, dilation_plan, set_dilation
from .weights import load_checked, read_state_dict

BN_EPS = 1e-3  # xception_arg_scope's batch_norm_epsilon, which timm's port keeps too
Skip = Literal["conv", "sum", "none"]  # xception_module's skip_connection_type
# xception_65's blocks: (TF scope, depths, stride, skip, units, activation_fn_in_separable_conv)
XCEPTION_65: tuple[tuple[str, tuple[int, int, int], int, Skip, int, bool], ...] = (
    ("entry_flow/block1", (128, 128, 128), 2, "conv", 1, False),
    ("entry_flow/block2", (256, 256, 256), 2, "conv", 1, False),
    ("entry_flow/block3", (728, 728, 728), 2, "conv", 1, False),
    ("middle_flow/block1", (728, 728, 728), 1, "sum", 16, False),
    ("exit_flow/block1", (728, 1024, 1024), 2, "conv", 1, False),
    ("exit_flow/block2", (1536, 1536, 2048), 1, "none", 1, True),
)


class ConvBN(nn.Module):
    """slim's conv2d + BN (+ ReLU), named ``conv``/``bn`` as timm's ``ConvNormAct``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class SeparableConv(nn.Module):
    """TF's ``separable_convN_depthwise`` and ``_pointwise``: depthwise 3x3 → BN (→ ReLU) → 1x1 → BN (→ ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, relu_inside: bool = False) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu_inside = relu_inside

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn_dw(self.conv_dw(x))
        x = self.bn_pw(self.conv_pw(F.relu(x) if self.relu_inside else x))
        return F.relu(x) if self.relu_inside else x


class XceptionModule(nn.Module):
    """One unit: three separable convs (the stride in the third) plus the ``skip`` shortcut."""

    def __init__(
        self, in_channels: int, depths: tuple[int, int, int], stride: int, skip: Skip, relu_inside: bool
    ) -> None:
        super().__init__()
        self.skip = skip
        self.shortcut = ConvBN(in_channels, depths[-1], 1, stride, relu=False) if skip == "conv" else None
        widths = (in_channels, *depths)
        self.stack = nn.Sequential(
            OrderedDict(
                (f"conv{i + 1}", SeparableConv(widths[i], widths[i + 1], stride if i == 2 else 1, relu_inside))
                for i in range(3)
            )
        )

    def forward_with_tap(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The unit's output and ``separable_conv2_pointwise``'s (the second conv's BN output, before any ReLU)."""
        y = tap = x
        for i, conv in enumerate(self.stack):
            if i == 2:
                tap = y
            y = conv(y if conv.relu_inside else F.relu(y))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.skip == "sum":
            y = y + x
        return y, tap

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_tap(x)[0]


class Xception65Backbone(Backbone):
    """Aligned Xception-65 (DeepLabv3+'s backbone) with output stride 8/16/32, strides turned into rates as TF's
    ``stack_blocks_dense`` (the unit that would pass the output stride keeps the current rate, later units use the
    multiplied one).

    Features: ``low_level`` = entry-flow block2's second separable conv (256 channels, stride 4) after its ReLU, or
    before it with ``tf_decoder_end_point`` (TF DeepLab's end point, set by ``DeepLabV3PlusNet``); ``mid`` = exit-flow
    block1's second separable conv after the ReLU (1024, stride min(16, OS)); ``out`` = the last unit (2048, stride
    OS). ``width_divisor`` narrows every layer (round(depth / divisor); 1 is the paper's network, tests build narrow
    ones). ``tf_scopes`` are the units' TF scopes, in order.
    """

    unused_weight_keys = ("head.",)

    def __init__(self, output_stride: int = 16, width_divisor: int = 1) -> None:
        super().__init__(output_stride)

        def width(depth: int) -> int:
            return max(1, round(depth / width_divisor))

        self.body = nn.Module()  # a container: its children's names are timm's feature model's
        self.body.stem_0 = ConvBN(3, width(32), 3, stride=2)
        self.body.stem_1 = ConvBN(width(32), width(64), 3)
        in_channels, self.tf_scopes, self.nominal_strides = width(64), [], []
        for scope, depths, stride, skip, units, relu_inside in XCEPTION_65:
            for u in range(units):
                unit = XceptionModule(in_channels, tuple(width(d) for d in depths), stride, skip, relu_inside)
                self.body.add_module(f"blocks_{len(self.tf_scopes)}", unit)
                self.tf_scopes.append(f"{scope}/unit_{u + 1}")
                self.nominal_strides.append(stride)
                in_channels = width(depths[-1])
        self.low_level_channels, self.mid_channels, self.out_channels = width(256), width(1024), width(2048)
        self.tf_decoder_end_point = False
        self.set_output_stride(output_stride)

    def units(self) -> list[XceptionModule]:
        return [m for name, m in self.body.named_children() if name.startswith("blocks_")]

    def _apply_output_stride(self, output_stride: int) -> None:
        plan = dilation_plan(self.nominal_strides, output_stride, stride=2)
        for unit, (stride, rate, _) in zip(self.units(), plan, strict=True):
            for sep in unit.stack:  # all three convs of a unit run at the rate before it, as TF's
                set_dilation(sep.conv_dw, rate, stride if sep is unit.stack.conv3 else None)
            if unit.shortcut is not None:
                unit.shortcut.conv.stride = (stride, stride)

    def load_imagenet(self, weights: str, name: str) -> dict[str, Tensor]:
        from .tf_zoo import is_tf_checkpoint  # tf_zoo builds on this module

        if is_tf_checkpoint(weights):
            return super().load_imagenet(weights, name)
        # timm's classification model names its modules "stem.N"/"blocks.N", its feature model "stem_N"/"blocks_N"
        state = read_state_dict(weights, name)
        state = {"body." + re.sub(r"^(stem|blocks)\.(\d+)", r"\1_\2", k): v for k, v in state.items()}
        rest = {k: v for k, v in state.items() if k.startswith("body.head.")}
        load_checked(self, {k: v for k, v in state.items() if k not in rest}, source=weights)
        return rest

    def forward(self, x: Tensor) -> Features:
        units = self.units()
        x = units[0](self.body.stem_1(self.body.stem_0(x)))  # (B, 128, H/4, W/4)
        x, low = units[1].forward_with_tap(x)  # low: (B, 256, H/4, W/4)
        for unit in units[2:-2]:
            x = unit(x)  # (B, 728, H/min(16, OS), ...)
        x, mid = units[-2].forward_with_tap(x)  # mid: (B, 1024, H/min(16, OS), ...)
        low = low if self.tf_decoder_end_point else F.relu(low)
        return {"low_level": low, "mid": F.relu(mid), "out": units[-1](x)}  # out: (B, 2048, H/OS, W/OS)
