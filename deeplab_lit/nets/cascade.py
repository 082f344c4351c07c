"""DeepLabv3 "going deeper": copies of ResNet's block4 cascaded as block5–block7 (V3 §3.2, Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from ..errors import ConfigError
from .backbones import configure_layer, dilation_plan


def _block4_copy(channels: int) -> nn.Sequential:
    """Three bottleneck units; the first holds the block's nominal stride 2 and its projection shortcut."""
    down = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=2, bias=False), nn.BatchNorm2d(channels))
    units = [Bottleneck(channels, channels // 4, stride=2, downsample=down)]
    return nn.Sequential(*units, *(Bottleneck(channels, channels // 4) for _ in range(2)))


class CascadedBlocks(nn.Module):
    """``num_blocks`` extra blocks after block4. Past the output stride their strides become rates that
    double block by block (block4 rate 2 → block5 4 → block6 8 → block7 16 at OS 16), with multi-grid
    inside each block; at larger output strides they decimate (Table 1's OS 64–256).
    """

    def __init__(
        self,
        num_blocks: int,
        channels: int = 2048,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ConfigError(f"cascade needs at least one extra block, got num_blocks={num_blocks}")
        self.blocks = nn.Sequential(*(_block4_copy(channels) for _ in range(num_blocks)))
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        start = min(output_stride, 32)  # what the backbone reached, with its rate 32 / start
        plan = dilation_plan([2] * len(self.blocks), output_stride, stride=start, dilation=32 // start)
        for block, (stride, first, dilation) in zip(self.blocks, plan, strict=True):
            configure_layer(block, stride, first, dilation, self.multi_grid)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)  # (B, 2048, H/OS, W/OS)
