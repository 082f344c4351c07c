"""Datasets, DeepLab augmentation presets and LightningDataModules."""

from .datamodule import SegmentationDataModule, ShapesDataModule
from .shapes import SHAPES_CLASSES, ShapesDataset

__all__ = ["SHAPES_CLASSES", "SegmentationDataModule", "ShapesDataModule", "ShapesDataset"]
