"""DeepLabv3+ decoder: refine the encoder's output with stride-4 low-level features (V3+ §3.1, Fig. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .aspp import ConvBNReLU


class Decoder(nn.Module):
    """1x1 reduction of the low-level features → concat with the upsampled encoder output → 3x3 convs.

    Defaults are the paper's best: 48 low-level channels (Table 1), two [3x3, 256] convs (Table 2).
    ``align_corners`` is the upsampling's (TF DeepLab resizes with ``align_corners=True``).
    """

    def __init__(
        self,
        in_channels: int,
        low_level_in: int,
        low_level_channels: int = 48,
        channels: int = 256,
        num_convs: int = 2,
        separable: bool = False,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        if num_convs < 1 or low_level_channels < 1:
            raise ConfigError(
                f"decoder needs num_convs >= 1 and low_level_channels >= 1, got {num_convs} and {low_level_channels}"
            )
        self.reduce = ConvBNReLU(low_level_in, low_level_channels)
        widths = [in_channels + low_level_channels] + [channels] * num_convs
        self.convs = nn.Sequential(
            *(ConvBNReLU(cin, cout, 3, separable=separable) for cin, cout in zip(widths, widths[1:], strict=False))
        )
        self.out_channels = channels

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        low = self.reduce(low_level)  # (B, 48, H/4, W/4)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.convs(torch.cat([x, low], dim=1))  # (B, 256, H/4, W/4)
