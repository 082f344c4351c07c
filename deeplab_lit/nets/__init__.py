"""DeepLab networks in pure PyTorch (no Lightning import)."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .aspp import ASPP, ASPPv2, AtrousFC, ImagePooling
from .backbones import BACKBONES, Backbone, build_backbone, count_parameters
from .cascade import CascadedBlocks
from .decoder import Decoder
from .deeplab import DeepLabNet, DeepLabV1Net, DeepLabV2Net, upsample_to
from .deeplabv3 import DeepLabV3Net, DeepLabV3PlusNet
from .msc import MSC
from .weights import convert_torchvision_deeplabv3, load_checked

GENERATIONS: dict[str, type[DeepLabNet]] = {
    "v1": DeepLabV1Net,
    "v2": DeepLabV2Net,
    "v3": DeepLabV3Net,
    "v3plus": DeepLabV3PlusNet,
}


def build_net(generation: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build a generation's network by name ("v1", "v2", "v3", "v3plus") with its keyword arguments."""
    if generation not in GENERATIONS:
        raise ConfigError(f"unknown DeepLab generation {generation!r}; choose from {tuple(GENERATIONS)}")
    return GENERATIONS[generation](num_classes, **kwargs)


__all__ = [
    "ASPP",
    "ASPPv2",
    "AtrousFC",
    "BACKBONES",
    "Backbone",
    "CascadedBlocks",
    "Decoder",
    "DeepLabNet",
    "DeepLabV1Net",
    "DeepLabV2Net",
    "DeepLabV3Net",
    "DeepLabV3PlusNet",
    "GENERATIONS",
    "ImagePooling",
    "MSC",
    "build_backbone",
    "build_net",
    "convert_torchvision_deeplabv3",
    "count_parameters",
    "load_checked",
    "upsample_to",
]
