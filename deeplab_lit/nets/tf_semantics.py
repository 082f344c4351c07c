"""TensorFlow's semantics where they change a network's output, as switches on our modules.

A network converted from a TF checkpoint turns them on (``DeepLabV3Net(..., backbone_bn_eps=1e-3,
tf_same_padding=True, align_corners=True)``, and ``DeepLabV3PlusNet(..., tf_decoder_end_point=True)``); our own
training leaves PyTorch's defaults.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .backbones import Backbone, MobileNetV2Backbone
from .resnet_beta import ResNetBetaBackbone
from .xception_tf import Xception65Backbone


def set_bn_eps(module: nn.Module, eps: float) -> None:
    """Set every BatchNorm's epsilon (TF's slim layers use 1e-3 in Xception and MobileNetV2, PyTorch 1e-5)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = eps


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF ``SAME`` padding of one dimension: output ceil(size / stride), the odd pixel of padding at the end."""
    effective = dilation * (kernel - 1) + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _same_padding_hook(module: nn.Conv2d | nn.MaxPool2d, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    def pair(v: int | tuple[int, ...]) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    stride, kernel, dilation = pair(module.stride), pair(module.kernel_size), pair(module.dilation)
    if stride == (1, 1):  # stride 1 with an odd kernel: SAME is the symmetric padding the module already has
        return None
    x = args[0]
    top, bottom = same_pads(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_pads(x.shape[-1], kernel[1], stride[1], dilation[1])
    # the module's own padding is replaced, re-set here because set_output_stride may have changed it
    module.padding = (0, 0) if isinstance(module, nn.Conv2d) else 0
    fill = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
    return (F.pad(x, (left, right, top, bottom), value=fill),) + args[1:]


def use_tf_same_padding(backbone: Backbone) -> None:
    """Pad the layers that TF DeepLab pads ``SAME`` as TF does (the odd pixel at the end on even sizes), in place.

    MobileNetV2 pads every convolution SAME; ResNet-v1-beta only its max pool (its strided convolutions pad
    explicitly and symmetrically, slim's ``conv2d_same``); Xception pads its strided convolutions explicitly too.
    On sizes where every strided layer sees an odd input (DeepLab's 513 crops, 65, 97, 129, ...) SAME equals
    PyTorch's symmetric padding; on even sizes it shifts the sampling grid by one pixel.
    """
    if isinstance(backbone, MobileNetV2Backbone):
        layers = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    elif isinstance(backbone, ResNetBetaBackbone):
        layers = [backbone.pool1]
    elif isinstance(backbone, Xception65Backbone):
        layers = []
    else:
        raise ConfigError(
            f"tf_same_padding applies to the backbones of TF DeepLab (mobilenet_v2, resnet50_beta, resnet101_beta, "
            f"xception65), not {type(backbone).__name__}; set tf_same_padding: false"
        )
    for layer in layers:
        layer.register_forward_pre_hook(_same_padding_hook)


def use_tf_decoder_end_point(backbone: Backbone) -> None:
    """Give the decoder TF DeepLab's stride-4 end point (``feature_extractor.py``'s ``DECODER_END_POINTS``).

    Xception-65: ``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``, the BN output before the
    ReLU that our own training reads after (the paper does not say which; timm's taps after it). ResNet-v1-beta
    already reads TF's ``block1/unit_2/bottleneck_v1/conv3``.
    """
    if isinstance(backbone, Xception65Backbone):
        backbone.tf_decoder_end_point = True
    elif not isinstance(backbone, ResNetBetaBackbone):
        raise ConfigError(
            f"tf_decoder_end_point applies to the decoders of TF DeepLab's xception65, resnet50_beta and "
            f"resnet101_beta, not {type(backbone).__name__}; set tf_decoder_end_point: false"
        )
