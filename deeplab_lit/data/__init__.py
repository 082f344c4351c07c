"""Datasets, DeepLab augmentation presets and LightningDataModules."""

from .cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from .context import CONTEXT_CLASSES, ContextShapesDataset
from .datamodule import SegmentationDataModule
from .modules import CityscapesDataModule, ContextDataModule, FolderDataModule, ShapesDataModule, VOCDataModule
from .sbd import SBDSegmentation, TrainAugSegmentation
from .shapes import SHAPES_CLASSES, ShapesDataset
from .voc import VOC_CLASSES, DataError, VOCSegmentation

__all__ = [
    "CITYSCAPES_CLASSES",
    "CityscapesDataModule",
    "CityscapesSegmentation",
    "CONTEXT_CLASSES",
    "ContextDataModule",
    "ContextShapesDataset",
    "SBDSegmentation",
    "TrainAugSegmentation",
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "DataError",
    "FolderDataModule",
    "SegmentationDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "VOCDataModule",
    "VOCSegmentation",
]
