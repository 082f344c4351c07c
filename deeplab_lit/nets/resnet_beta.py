"""ResNet-v1-beta, the ResNet of TF DeepLab (``research/deeplab/core/resnet_v1_beta.py``).

Two differences from torchvision's ResNet: the 7x7 stem is three 3x3 convolutions (64, 64, 128), and a block's
stride sits in its *last* unit (slim's convention), so block1's first two units run at stride 4 and DeepLab's
stride-4 decoder features are ``block1/unit_2``'s output. Module names follow the TF scopes, so a converted
checkpoint maps one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .backbones import Backbone, Features, dilation_plan, set_dilation

UNITS = {"resnet50_beta": (3, 4, 6, 3), "resnet101_beta": (3, 4, 23, 3)}


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool = True) -> nn.Sequential:
    """slim's conv2d with batch norm (and ReLU); 'same' padding is symmetric here as in slim's ``conv2d_same``."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BottleneckV1(nn.Module):
    """slim's ``bottleneck_v1``: 1x1 → 3x3 (stride, rate) → 1x1, BN after each conv, ReLU after the sum.

    The shortcut is a 1x1 conv + BN where the depth changes, otherwise the input subsampled by the stride.
    """

    def __init__(self, in_channels: int, depth: int, bottleneck: int) -> None:
        super().__init__()
        self.shortcut = conv_bn(in_channels, depth, 1, relu=False) if in_channels != depth else None
        self.conv1 = conv_bn(in_channels, bottleneck, 1)
        self.conv2 = conv_bn(bottleneck, bottleneck, 3)
        self.conv3 = conv_bn(bottleneck, depth, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def set_geometry(self, stride: int, rate: int) -> None:
        set_dilation(self.conv2[0], rate, stride)
        if self.shortcut is not None:
            self.shortcut[0].stride = (stride, stride)

    def branch_and_output(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The residual branch (``conv3``'s output after BN) and the unit's output."""
        s = self.conv2[0].stride[0]
        shortcut = self.shortcut(x) if self.shortcut is not None else x[:, :, ::s, ::s]
        branch = self.conv3(self.conv2(self.conv1(x)))
        return branch, self.relu(shortcut + branch)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch_and_output(x)[1]


class ResNetBetaBackbone(Backbone):
    """ResNet-50/101-v1-beta with output stride 8/16/32 and multi-grid in block4, as TF DeepLab builds it.

    Strides become rates exactly as slim's ``stack_blocks_dense``: the unit that would pass the output stride
    keeps stride 1 at the current rate and every later unit uses the multiplied rate; block4's unit ``i`` uses
    ``rate * multi_grid[i]``. Features: ``low_level`` = ``block1/unit_2/bottleneck_v1/conv3`` (256 channels,
    stride 4: the residual branch before the sum and ReLU, the end point TF DeepLab's decoder reads), ``mid`` =
    block2 (512, stride min(16, OS)), ``out`` = block4 (2048, stride OS). ``base_depth`` narrows every layer (64
    in the paper; the tests build narrow ones).
    """

    def __init__(
        self,
        name: str = "resnet101_beta",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        base_depth: int = 64,
    ) -> None:
        super().__init__(output_stride)
        units = UNITS[name]
        if multi_grid is not None and len(multi_grid) != units[3]:
            raise ConfigError(f"multi_grid {tuple(multi_grid)} needs one rate per unit of block4 ({units[3]} units)")
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else (1,) * units[3]
        w = base_depth
        self.conv1_1, self.conv1_2, self.conv1_3 = conv_bn(3, w, 3), conv_bn(w, w, 3), conv_bn(w, 2 * w, 3)
        self.conv1_1[0].stride = (2, 2)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels, self.blocks = 2 * w, nn.ModuleList()
        for i, n in enumerate(units):
            depth = w * 2**i
            first = BottleneckV1(in_channels, 4 * depth, depth)
            self.blocks.append(nn.Sequential(first, *(BottleneckV1(4 * depth, 4 * depth, depth) for _ in range(n - 1))))
            in_channels = 4 * depth
        self.low_level_channels, self.mid_channels, self.out_channels = 4 * w, 8 * w, 32 * w
        # the stride of blocks 1-3 is in their last unit; block4 keeps stride 1
        self.nominal_strides = [2 if j == n - 1 and i < 3 else 1 for i, n in enumerate(units) for j in range(n)]
        self.set_output_stride(output_stride)

    def units(self) -> list[BottleneckV1]:
        return [unit for block in self.blocks for unit in block]

    def _apply_output_stride(self, output_stride: int) -> None:
        plan = dilation_plan(self.nominal_strides, output_stride, stride=4)
        grids = [1] * (len(self.nominal_strides) - len(self.multi_grid)) + list(self.multi_grid)  # block4's units
        for unit, (stride, rate, _), grid in zip(self.units(), plan, grids, strict=True):
            unit.set_geometry(stride, rate * grid)

    def forward(self, x: Tensor) -> Features:
        x = self.pool1(self.conv1_3(self.conv1_2(self.conv1_1(x))))  # (B, 128, H/4, W/4)
        block1 = self.blocks[0]
        low, x = block1[1].branch_and_output(block1[0](x))  # (B, 256, H/4, W/4) each
        mid = self.blocks[1](block1[2:](x))  # (B, 512, H/min(16, OS), ...)
        return {"low_level": low, "mid": mid, "out": self.blocks[3](self.blocks[2](mid))}  # (B, 2048, H/OS, W/OS)
