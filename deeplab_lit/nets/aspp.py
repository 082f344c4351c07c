"""Atrous heads: V1's atrous fc6/fc7 (LargeFOV), V2's ASPP (summed classifiers), V3's ASPP (+ image pooling)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .backbones import set_dilation


def check_rates(rates: Sequence[int]) -> tuple[int, ...]:
    rates = tuple(rates)
    if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
        raise ConfigError(
            f"atrous rates must be a non-empty list of positive integers, got {rates} (--model.init_args.atrous_rates)"
        )
    return rates


def scale_rates(rates: Sequence[int], rates_stride: int, output_stride: int) -> tuple[int, ...]:
    """Rates given at ``rates_stride`` for features at ``output_stride`` (V3: (6, 12, 18) at 16 -> ×2 at 8)."""
    return tuple(max(1, round(r * rates_stride / output_stride)) for r in rates)


class ConvBNReLU(nn.Sequential):
    """k×k conv → BN → ReLU, or its depthwise-separable form (depthwise → BN → ReLU → 1x1 → BN → ReLU, V3+)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, separable: bool = False
    ) -> None:
        pad = dilation * (kernel_size - 1) // 2
        if separable and kernel_size > 1:
            super().__init__(
                nn.Conv2d(
                    in_channels,
                    in_channels,
                    kernel_size,
                    padding=pad,
                    dilation=dilation,
                    groups=in_channels,
                    bias=False,
                ),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
        else:
            super().__init__(
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )

    def set_rate(self, rate: int) -> None:
        set_dilation(self[0], rate)


class AtrousFC(nn.Sequential):
    """fc6 (k×k atrous conv) → ReLU → Dropout → fc7 (1x1) → ReLU → Dropout, VGG's fc layers as convs (V1).

    LargeFOV is kernel 3, rate 12, 1024 channels; V1 Table 2's other rows are (7, 4, 4096), (4, 4, 4096)
    and (4, 8, 4096).
    """

    def __init__(
        self, in_channels: int, channels: int = 1024, kernel_size: int = 3, rate: int = 12, dropout: float = 0.5
    ) -> None:
        if (rate * (kernel_size - 1)) % 2:
            raise ConfigError(f"fc6 kernel {kernel_size} with rate {rate} has no symmetric padding; use an even rate")
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)

    def set_rate(self, rate: int) -> None:
        set_dilation(self.fc6, rate)


def classifier_conv(in_channels: int, num_classes: int, kernel_size: int = 1, rate: int = 1) -> nn.Conv2d:
    """A logits layer initialised N(0, 0.01) as DeepLab's fc8."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    conv.is_classifier = True  # re-initialised when fine-tuning to another class count
    return conv


class ASPPv2(nn.Module):
    """V2's ASPP: one classifier per rate on the same features, logits summed (V2 §3.3, Fig. 4).

    ``fc_channels > 0`` gives each branch its own fc6 (3x3 atrous) → fc7 → fc8 stack, as the VGG16
    model; ``fc_channels = 0`` gives one 3x3 atrous classifier per rate, as the released ResNet-101.
    ``rates`` are given at ``rates_stride`` (8 in V2) and rescaled by ``set_output_stride``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18, 24),
        fc_channels: int = 1024,
        rates_stride: int = 8,
        output_stride: int = 8,
    ) -> None:
        super().__init__()
        self.base_rates, self.rates_stride = check_rates(rates), rates_stride
        actual = scale_rates(self.base_rates, rates_stride, output_stride)
        if fc_channels > 0:
            self.branches = nn.ModuleList(
                nn.Sequential(AtrousFC(in_channels, fc_channels, 3, r), classifier_conv(fc_channels, num_classes))
                for r in actual
            )
        else:
            self.branches = nn.ModuleList(classifier_conv(in_channels, num_classes, 3, r) for r in actual)

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple((b[0].fc6 if isinstance(b, nn.Sequential) else b).dilation[0] for b in self.branches)

    def set_output_stride(self, output_stride: int) -> None:
        for branch, rate in zip(
            self.branches, scale_rates(self.base_rates, self.rates_stride, output_stride), strict=True
        ):
            if isinstance(branch, nn.Sequential):
                branch[0].set_rate(rate)
            else:
                set_dilation(branch, rate)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)  # (B, classes, h, w)


class ImagePooling(nn.Sequential):
    """Image-level features: global average pool → 1x1 conv → BN → ReLU → upsample (V3 §3.3)."""

    def __init__(self, in_channels: int, out_channels: int, align_corners: bool = False) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        )
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(F.adaptive_avg_pool2d(x, 1))  # (B, C, 1, 1)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class ASPP(nn.Module):
    """V3's ASPP: 1x1 + one 3x3 atrous branch per rate (+ image pooling), concatenated and projected.

    ``rates`` are given at ``rates_stride`` (16 in V3: (6, 12, 18), doubled at OS 8); ``rates=()`` keeps only
    the 1x1 branch (and image pooling), as TF DeepLab's MobileNetV2 models. With ``image_pooling=False`` the
    branch does not exist (no parameters, no compute). ``align_corners`` is the image-pooling upsampling's.
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        out_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        dropout: float = 0.1,
        rates_stride: int = 16,
        output_stride: int = 16,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.base_rates, self.rates_stride = check_rates(rates) if len(rates) else (), rates_stride
        actual = scale_rates(self.base_rates, rates_stride, output_stride)
        self.convs = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels)]
            + [ConvBNReLU(in_channels, out_channels, 3, r, separable) for r in actual]
        )
        self.pooling = ImagePooling(in_channels, out_channels, align_corners) if image_pooling else None
        branches = len(self.convs) + (self.pooling is not None)
        self.project = nn.Sequential(
            nn.Conv2d(branches * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(conv[0].dilation[0] for conv in self.convs[1:])

    def set_output_stride(self, output_stride: int) -> None:
        for conv, rate in zip(
            self.convs[1:], scale_rates(self.base_rates, self.rates_stride, output_stride), strict=True
        ):
            conv.set_rate(rate)

    def forward(self, x: Tensor) -> Tensor:
        feats = [conv(x) for conv in self.convs]
        if self.pooling is not None:
            feats.append(self.pooling(x))
        return self.project(torch.cat(feats, dim=1))  # (B, 256, h, w)
