"""Datasets, DeepLab augmentation presets and LightningDataModules."""

from .datamodule import FolderDataModule, SegmentationDataModule, ShapesDataModule, VOCDataModule
from .shapes import SHAPES_CLASSES, ShapesDataset
from .voc import VOC_CLASSES, DataError, VOCSegmentation

__all__ = [
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
