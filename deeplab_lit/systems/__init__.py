"""The Lightning layer: the shared segmentation module and one subclass per DeepLab generation."""

from .deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from .segmentation import SegmentationModule

__all__ = ["DeepLabV1", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "SegmentationModule"]
