"""A narrow plain CNN whose receptive field is much smaller than the context task's cue distances.

Four 3×3 convs (three of stride 2) reach stride 8 with a 19-px theoretical receptive field; the stride-16 and
stride-32 stages are 1×1 convs of stride 2, so the receptive field stays 19 px at every output stride and anything
farther away has to be reached by the head (its atrous rates or image pooling).
"""

from __future__ import annotations

from torch import Tensor, nn

from .backbones import Backbone, Features, dilation_plan


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNNBackbone(Backbone):
    """``small_cnn``: 3×3 convs of 16 (stride 2), 16, 32 (stride 4: ``low_level``) and 64 channels (stride 8), a
    1×1 of 64 channels at stride 8, then 1×1 stride-2 convs to 64 (``mid``, stride 16) and 128 channels (``out``,
    stride 32). Past the output stride those strides become 1: a 1×1 conv has nothing to dilate, so the network
    computes the same function at output stride 8, 16 and 32, sampled more or less densely.
    """

    def __init__(self, output_stride: int = 8, width: int = 16) -> None:
        super().__init__(output_stride)
        self.low_level_channels, self.mid_channels, self.out_channels = 2 * width, 4 * width, 8 * width
        self.stem = nn.Sequential(conv_bn_relu(3, width, stride=2), conv_bn_relu(width, width))
        self.layer1 = conv_bn_relu(width, 2 * width, stride=2)
        self.layer2 = nn.Sequential(conv_bn_relu(2 * width, 4 * width, stride=2), conv_bn_relu(4 * width, 4 * width, 1))
        self.layer3 = conv_bn_relu(4 * width, 4 * width, 1, stride=2)
        self.layer4 = conv_bn_relu(4 * width, 8 * width, 1, stride=2)
        self.set_output_stride(output_stride)

    def _apply_output_stride(self, output_stride: int) -> None:
        plan = dilation_plan([2, 2], output_stride, stride=8)
        for layer, (stride, _, _) in zip((self.layer3, self.layer4), plan, strict=True):
            layer[0].stride = (stride, stride)

    def forward(self, x: Tensor) -> Features:
        low = self.layer1(self.stem(x))  # (B, 32, H/4, W/4)
        mid = self.layer3(self.layer2(low))  # (B, 64, H/min(16, OS), W/min(16, OS))
        return {"low_level": low, "mid": mid, "out": self.layer4(mid)}  # (B, 128, H/OS, W/OS)
