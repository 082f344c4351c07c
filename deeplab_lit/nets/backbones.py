"""Backbones with a settable output stride: VGG16 (DeepLab-LargeFOV trunk), ResNet, MobileNetV2 (Xception-65:
``xception_tf.py``, ResNet-v1-beta: ``resnet_beta.py``, the context task's small CNN: ``small_cnn.py``).

Every backbone returns ``{"low_level": stride-4 features, "mid": stride-16 stage, "out": stride-OS features}``
and can change its output stride after it is built (``set_output_stride``), turning strides into dilations
as DeepLab does, so a model trained at OS 16 is evaluated at OS 8 with the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..errors import ConfigError
from .weights import load_checked, read_state_dict

Features = dict[str, Tensor]


def dilation_plan(
    strides: Sequence[int], output_stride: int, stride: int = 1, dilation: int = 1
) -> list[tuple[int, int, int]]:
    """Turn the nominal strides of successive units into ``(stride, first_dilation, dilation)`` per unit.

    Once the running stride reaches ``output_stride`` a unit keeps stride 1 and multiplies the dilation
    instead (timm's rule). ``first_dilation`` is the dilation before the unit, used by the layer that
    held the stride, as in torchvision's dilated ResNet.
    """
    plan = []
    for s in strides:
        first = dilation
        if stride * s > output_stride:
            dilation, s = dilation * s, 1
        else:
            stride *= s
        plan.append((s, first, dilation))
    return plan


def set_dilation(conv: nn.Conv2d, dilation: int, stride: int | None = None) -> None:
    """Change a built conv's dilation (and stride) in place, keeping the output size ('same' padding)."""
    k = conv.kernel_size[0]
    if (dilation * (k - 1)) % 2:
        raise ValueError(f"kernel {k} with dilation {dilation} has no symmetric 'same' padding")
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (k - 1) // 2,) * 2
    if stride is not None:
        conv.stride = (stride, stride)


class Backbone(nn.Module):
    """Common interface: channel counts, allowed output strides, ImageNet weights, ``set_output_stride``."""

    output_strides: tuple[int, ...] = (8, 16, 32)
    out_channels: int
    low_level_channels: int
    mid_channels: int
    unused_weight_keys: tuple[str, ...] = ()  # ImageNet classifier entries that a backbone does not hold

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.output_stride = output_stride

    def check_output_stride(self, output_stride: int) -> None:
        if output_stride not in self.output_strides:
            raise ConfigError(
                f"{type(self).__name__} cannot give output stride {output_stride}; allowed: {self.output_strides} "
                "(--model.init_args.output_stride, eval_output_stride)"
            )

    def set_output_stride(self, output_stride: int) -> None:
        self.check_output_stride(output_stride)
        self._apply_output_stride(output_stride)
        self.output_stride = output_stride

    def _apply_output_stride(self, output_stride: int) -> None:
        raise NotImplementedError

    def load_imagenet(self, weights: str, name: str) -> dict[str, Tensor]:
        """Load ImageNet weights (torchvision/timm name, file or TF checkpoint); return the entries left over."""
        from .tf_zoo import is_tf_checkpoint, load_tf_backbone  # tf_zoo builds on this module

        if is_tf_checkpoint(weights):
            return load_tf_backbone(self, weights)
        state = read_state_dict(weights, name)
        rest = {k: v for k, v in state.items() if k.startswith(self.unused_weight_keys)}
        load_checked(self, {k: v for k, v in state.items() if k not in rest}, source=weights)
        return rest


def _layer_convs(block: nn.Module) -> tuple[nn.Conv2d, list[nn.Conv2d]]:
    """The conv holding a residual unit's stride, and all its 3x3 convs."""
    if isinstance(block, Bottleneck):
        return block.conv2, [block.conv2]
    if isinstance(block, BasicBlock):
        return block.conv1, [block.conv1, block.conv2]
    raise TypeError(f"not a ResNet unit: {type(block).__name__}")


def configure_layer(
    layer: nn.Sequential, stride: int, first_dilation: int, dilation: int, multi_grid: Sequence[int] | None
) -> None:
    """Set a ResNet stage's stride and dilations in place.

    Without multi-grid the first unit's strided conv (and any 3x3 before it) keeps ``first_dilation``, as
    torchvision's dilated ResNet, and every later 3x3 uses ``dilation``: the network then computes the same function
    at every output stride, sampled more densely. With multi-grid unit ``i`` uses ``dilation * multi_grid[i]``
    (DeepLabv3 §3.2).
    """
    if multi_grid is not None and len(multi_grid) != len(layer):
        raise ConfigError(f"multi_grid {tuple(multi_grid)} needs one rate per unit ({len(layer)} units)")
    for i, block in enumerate(layer):
        stride_conv, convs = _layer_convs(block)
        before_stride = convs[: convs.index(stride_conv) + 1] if i == 0 else []
        for conv in convs:
            if multi_grid is not None:
                d = dilation * multi_grid[i]
            else:
                d = first_dilation if any(conv is c for c in before_stride) else dilation
            set_dilation(conv, d, stride if (i == 0 and conv is stride_conv) else None)
        if i == 0 and block.downsample is not None:
            block.downsample[0].stride = (stride, stride)


class ResNetBackbone(Backbone):
    """torchvision ResNet-18/34/50/101 with output stride 8/16/32 and multi-grid in the last stage.

    BasicBlock (ResNet-18/34) refuses dilation in torchvision's constructor; dilating the built convs
    in place works for both unit types.
    """

    unused_weight_keys = ("fc.",)

    def __init__(
        self, name: str = "resnet101", output_stride: int = 16, multi_grid: Sequence[int] | None = None
    ) -> None:
        super().__init__(output_stride)
        net = getattr(torchvision.models, name)(weights=None)
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(net, part))
        expansion = 4 if isinstance(net.layer1[0], Bottleneck) else 1
        self.low_level_channels, self.mid_channels, self.out_channels = (
            64 * expansion,
            256 * expansion,
            512 * expansion,
        )
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        self.set_output_stride(output_stride)

    def _apply_output_stride(self, output_stride: int) -> None:
        layers = [self.layer1, self.layer2, self.layer3, self.layer4]
        plan = dilation_plan([1, 2, 2, 2], output_stride, stride=4)
        for i, (layer, (stride, first, dilation)) in enumerate(zip(layers, plan, strict=True)):
            configure_layer(layer, stride, first, dilation, self.multi_grid if i == 3 else None)

    def forward(self, x: Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        low = self.layer1(x)  # (B, 256, H/4, W/4) for Bottleneck
        mid = self.layer3(self.layer2(low))  # (B, 1024, H/min(16, OS), ...)
        return {"low_level": low, "mid": mid, "out": self.layer4(mid)}  # out: (B, 2048, H/OS, W/OS)


class VGG16Backbone(Backbone):
    """VGG16 conv1–conv5 as DeepLab-LargeFOV uses them (V1 §3.1).

    Pools are 3x3 with padding 1; pools past the output stride keep stride 1 and the convs after them
    are dilated (conv5 at dilation 2 for the paper's OS 8). fc6/fc7 live in the head.
    """

    unused_weight_keys = ("classifier.",)
    pool_indices = (4, 9, 16, 23, 30)

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__(output_stride)
        self.features = torchvision.models.vgg16(weights=None).features
        for i in self.pool_indices:
            self.features[i] = nn.MaxPool2d(3, stride=2, padding=1)
        self.low_level_channels, self.mid_channels, self.out_channels = 128, 512, 512
        self.set_output_stride(output_stride)

    def _apply_output_stride(self, output_stride: int) -> None:
        plan = dilation_plan([2] * len(self.pool_indices), output_stride)
        dilation = 1
        for i, layer in enumerate(self.features):
            if i in self.pool_indices:
                stride, _, dilation = plan[self.pool_indices.index(i)]
                layer.stride = stride
            elif isinstance(layer, nn.Conv2d):
                set_dilation(layer, dilation)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The input and the outputs of pool1–pool5, the taps of DeepLab-MSc."""
        outs, start = [x], 0
        for end in self.pool_indices:
            x = self.features[start : end + 1](x)
            outs.append(x)
            start = end + 1
        return outs

    def forward(self, x: Tensor) -> Features:
        _, _, low, _, mid, out = self.stages(x)
        return {"low_level": low, "mid": mid, "out": out}  # out: (B, 512, H/OS, W/OS)


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 up to the 320-channel layer (as DeepLab's MobileNetV2 feature extractor).

    ``width_mult`` is TF DeepLab's ``depth_multiplier``: below 1 widths are rounded to the nearest integer, not to
    a multiple of 8, as its feature extractor does (``mobilenetv2_dm05_*`` models).
    """

    unused_weight_keys = ("features.18.", "classifier.")

    def __init__(self, output_stride: int = 16, width_mult: float = 1.0) -> None:
        super().__init__(output_stride)
        net = torchvision.models.mobilenet_v2(width_mult=width_mult, round_nearest=8 if width_mult == 1 else 1)
        self.features = net.features[:18]
        self.low_level_channels, self.mid_channels, self.out_channels = (
            self.features[i].out_channels for i in (3, 13, 17)
        )
        self.nominal_strides = [self._depthwise(b).stride[0] for b in self.features[1:]]
        self.set_output_stride(output_stride)

    def _depthwise(self, block: InvertedResidual) -> nn.Conv2d:
        return next(m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)

    def _apply_output_stride(self, output_stride: int) -> None:
        plan = dilation_plan(self.nominal_strides, output_stride, stride=2)
        for block, (stride, first, _) in zip(self.features[1:], plan, strict=True):
            set_dilation(self._depthwise(block), first, stride)  # a unit that kept its stride has first == dilation

    def forward(self, x: Tensor) -> Features:
        low = self.features[:4](x)  # (B, 24, H/4, W/4)
        mid = self.features[4:14](low)  # (B, 96, H/min(16, OS), ...)
        return {"low_level": low, "mid": mid, "out": self.features[14:](mid)}  # (B, 320, H/OS, W/OS)


RESNET_BETA = ("resnet50_beta", "resnet101_beta")  # TF DeepLab's ResNet-v1-beta (resnet_beta.py)
BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", *RESNET_BETA, "mobilenet_v2", "xception65")
BACKBONES += ("small_cnn",)  # the context task's trunk (small_cnn.py)
CAFFE_BACKBONES = ("vgg16_caffe", "resnet101_caffe")  # the DeepLab V1/V2 releases' layouts (caffe_semantics.py)


def build_backbone(
    name: str | Backbone,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    weights: str | None = None,
) -> tuple[Backbone, dict[str, Tensor]]:
    """Build a backbone by name, optionally with ImageNet weights; also return unused weight entries.

    A built ``Backbone`` (e.g. a narrower MobileNetV2) is re-strided to ``output_stride`` and keeps its own
    multi-grid.
    """
    backbone: Backbone
    names = BACKBONES + CAFFE_BACKBONES
    if isinstance(name, Backbone):
        name.set_output_stride(output_stride)
        backbone, name = name, type(name).__name__
    elif name not in names:
        raise ConfigError(f"unknown backbone {name!r} (--model.init_args.backbone); choose from {names}")
    elif name in RESNET_BETA:
        from .resnet_beta import ResNetBetaBackbone  # it builds on this module's Backbone

        backbone = ResNetBetaBackbone(name, output_stride, multi_grid)
    elif name.startswith("resnet") and name in BACKBONES:
        backbone = ResNetBackbone(name, output_stride, multi_grid)
    elif multi_grid is not None:
        raise ConfigError(
            f"multi_grid applies to ResNet backbones only, not {name!r}; pass --model.init_args.multi_grid null"
        )
    elif name in CAFFE_BACKBONES:
        from .caffe_semantics import CaffeResNetBackbone, CaffeVGG16Backbone  # imports this module

        backbone = CaffeVGG16Backbone(output_stride) if name == "vgg16_caffe" else CaffeResNetBackbone(output_stride)
    elif name == "vgg16":
        backbone = VGG16Backbone(output_stride)
    elif name == "mobilenet_v2":
        backbone = MobileNetV2Backbone(output_stride)
    elif name == "small_cnn":
        from .small_cnn import SmallCNNBackbone  # it builds on this module's Backbone

        backbone = SmallCNNBackbone(output_stride)
    else:
        from .xception_tf import Xception65Backbone  # it builds on this module's Backbone

        backbone = Xception65Backbone(output_stride)
    rest = backbone.load_imagenet(weights, name.removesuffix("_caffe")) if weights else {}
    return backbone, rest


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BACKBONES",
    "CAFFE_BACKBONES",
    "Backbone",
    "build_backbone",
    "count_parameters",
    "dilation_plan",
    "set_dilation",
]
