"""Caffe's semantics where they change the output of the DeepLab V1/V2 releases, as options a converted model turns on.

- ``vgg16_caffe``: VGG16 with Caffe's ceil-mode pooling (a 3x3/stride-2/pad-1 pool maps 65 to 33, not 32's floor).
- ``resnet101_caffe``: the MSRA Caffe ResNet-101 of DeepLab V2: the stride on the first 1x1 conv of a stage's first
  unit (torchvision puts it on the 3x3), every unit of a dilated stage at the stage's rate, pool1 3x3/stride 2/pad 1
  in ceil mode (513 -> 129 -> 65 at output stride 8).
- ``interp="caffe"``: the ``Interp`` layer: bilinear with corners aligned, zooming logits by the output stride to
  ``(h - 1) * OS + 1`` (513 for a 65-wide map), cropped to the input; MSC inputs shrunk and zoomed as the release's
  test prototxts do (0.75 = shrink 4, zoom 3; 0.5 = shrink 2) and the scales' logits fused by max at logit
  resolution before the zoom.
- BGR input with the mean pixel subtracted and no std scaling: the datamodule's ``mean``/``std`` (``CAFFE_MEAN_RGB``
  / 255 and 1 / 255) and the converter, which turns conv1's input channels from BGR to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .backbones import ResNetBackbone, VGG16Backbone, configure_layer, dilation_plan

Interp = Literal["bilinear", "caffe"]
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
CAFFE_MEAN_RGB = CAFFE_MEAN_BGR[::-1]


class CaffeVGG16Backbone(VGG16Backbone):
    """VGG16 as DeepLab's Caffe prototxts: the same layers, pooling in ceil mode."""

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__(output_stride)
        for i in self.pool_indices:
            self.features[i].ceil_mode = True


class CaffeResNetBackbone(ResNetBackbone):
    """The MSRA Caffe ResNet-101 as DeepLab V2 uses it (BN and Scale layers become one BatchNorm2d each)."""

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__("resnet101", output_stride)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def _apply_output_stride(self, output_stride: int) -> None:
        layers = [self.layer1, self.layer2, self.layer3, self.layer4]
        plan = dilation_plan([1, 2, 2, 2], output_stride, stride=4)
        for layer, (stride, _, dilation) in zip(layers, plan, strict=True):
            # a grid of ones: every unit at the stage's rate, as the release's res4*/res5* 3x3 convs
            configure_layer(layer, stride, dilation, dilation, (1,) * len(layer))
            first = layer[0]
            first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)


def caffe_scaled_size(size: int, scale: float) -> int:
    """The size Caffe's ``Interp`` gives for ``scale`` = zoom / shrink: shrink first, then zoom."""
    ratio = Fraction(scale).limit_denominator(16)
    out = (size - 1) // ratio.denominator + 1
    return out + (out - 1) * (ratio.numerator - 1)


def caffe_resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Caffe's ``Interp``: bilinear with the corner pixels aligned."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def caffe_zoom(logits: Tensor, size: Sequence[int], factor: int) -> Tensor:
    """Logits zoomed by ``factor`` as ``Interp(zoom_factor)`` ((h - 1) * factor + 1) and cropped to ``size``.

    Past the zoomed map (never in the release, which pads inputs to 513) the last row/column is repeated.
    """
    h, w = logits.shape[-2:]
    y = caffe_resize(logits, ((h - 1) * factor + 1, (w - 1) * factor + 1))[..., : size[0], : size[1]]
    short = (size[1] - y.shape[-1], size[0] - y.shape[-2])
    return F.pad(y, (0, short[0], 0, short[1]), mode="replicate") if any(short) else y  # (B, C, *size)


def caffe_multi_scale_forward(net: nn.Module, x: Tensor, scales: Sequence[float]) -> dict[str, Tensor]:
    """V2's MSC as its Caffe release: inputs resized by ``Interp``, logits fused by max at the scale-1 logit size,
    then zoomed to the input. ``"scales"`` holds each scale's logits zoomed the same way.
    """
    size, factor = x.shape[-2:], net.output_stride
    logits = [net.stride_logits(x)]  # (B, classes, h, w)
    for s in scales:
        xs = caffe_resize(x, [caffe_scaled_size(n, s) for n in size])
        logits.append(caffe_resize(net.stride_logits(xs), logits[0].shape[-2:]))
    fused = torch.stack(logits).amax(0)
    return {"out": caffe_zoom(fused, size, factor), "scales": [caffe_zoom(y, size, factor) for y in logits]}


def check_interp(interp: str) -> str:
    if interp not in ("bilinear", "caffe"):
        raise ConfigError(f"interp must be 'bilinear' or 'caffe', got {interp!r}")
    return interp


__all__ = [
    "CAFFE_MEAN_BGR",
    "CAFFE_MEAN_RGB",
    "CaffeResNetBackbone",
    "CaffeVGG16Backbone",
    "Interp",
    "caffe_multi_scale_forward",
    "caffe_resize",
    "caffe_scaled_size",
    "caffe_zoom",
    "check_interp",
]
