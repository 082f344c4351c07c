"""One LightningDataModule per data source: the built-in Shapes and Context data, VOC (+ SBD), Cityscapes and your
own folders. The loaders, samplers and augmentation they share are ``SegmentationDataModule``'s (``datamodule.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from ..errors import ConfigError
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, to_label_ids
from .context import CONTEXT_CLASSES, CONTEXT_PALETTE, CUE_DISTANCES, CUE_KINDS, ContextShapesDataset
from .datamodule import SegmentationDataModule
from .folder import FolderSegmentation
from .sbd import TrainAugSegmentation
from .shapes import ShapesDataset, check_shapes, shapes_palette
from .transforms import IGNORE_INDEX
from .voc import VOC_CLASSES, VOCSegmentation, voc_palette


class GeneratedDataModule(SegmentationDataModule):
    """Data generated on the fly (no download, deterministic by seed): ``sizes`` images per split from disjoint seeds
    (train ``seed``, val ``seed + 1``, test ``seed + 2``) of ``dataset_class(**generator)``; a subclass names them."""

    dataset_class: type[Dataset]

    def __init__(
        self,
        sizes: dict[str, int],
        seed: int,
        generator: dict[str, Any],
        batch_size: int,
        val_batch_size: int,
        num_workers: int,
        crop_size: int | tuple[int, int] | None,
        scale_range: tuple[float, float],
        predict_path: str | None,
        recipe_global_batch: int | None,
    ) -> None:
        super().__init__(
            batch_size,
            val_batch_size,
            num_workers,
            crop_size or generator["image_size"],
            scale_range,
            predict_path=predict_path,
            recipe_global_batch=recipe_global_batch,
        )
        self.sizes, self.seed, self.generator = sizes, seed, generator
        self.dataset_class(1, **generator)  # a wrong argument fails here, before any training

    def build(self, split: str) -> Dataset:
        offset = ("train", "val", "test").index(split)
        return self.dataset_class(self.sizes[split], seed=self.seed + offset, cache=True, **self.generator)


class ShapesDataModule(GeneratedDataModule):
    """The built-in Shapes data (see ``ShapesDataset``). ``object_scale``, ``max_objects``, ``shapes``, ``textured``
    and ``clutter`` set the generator; ``scale_range`` is the training augmentation's random rescale, as for the
    other datasets.
    """

    dataset_class = ShapesDataset

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        image_size: int = 128,
        seed: int = 0,
        object_scale: tuple[float, float] = (0.05, 0.5),
        max_objects: int = 4,
        shapes: list[str] | None = None,
        textured: float = 0.75,
        clutter: int = 5,
        ignore_band: int = 0,
        batch_size: int = 16,
        val_batch_size: int = 16,
        num_workers: int = 1,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        predict_path: str | None = None,
        recipe_global_batch: int | None = None,
    ) -> None:
        generator = {
            "image_size": image_size,
            "scale_range": tuple(object_scale),
            "max_objects": max_objects,
            "shapes": check_shapes(shapes),
            "textured": textured,
            "clutter": clutter,
            "ignore_band": ignore_band,
        }
        sizes = {"train": num_train, "val": num_val, "test": num_test}
        loading = (batch_size, val_batch_size, num_workers, crop_size, scale_range, predict_path, recipe_global_batch)
        super().__init__(sizes, seed, generator, *loading)
        self.class_names = ("background", *self.generator["shapes"])
        self.num_classes = len(self.class_names)
        self.palette = shapes_palette(self.generator["shapes"])


class ContextDataModule(GeneratedDataModule):
    """The built-in context task (see ``ContextShapesDataset``): the class of an object is told by a cue at a
    known distance (``local``) or by the background (``global``). A test split with one cue
    (``--data.init_args.cue_kinds [local] --data.init_args.cue_distances [96]``) scores one distance. Training
    does not rescale (``scale_range`` 1–1): a rescaled image would move its cues off their distances.
    """

    dataset_class = ContextShapesDataset
    num_classes = len(CONTEXT_CLASSES)
    class_names = CONTEXT_CLASSES
    palette = CONTEXT_PALETTE

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        image_size: int = 256,
        seed: int = 0,
        cue_kinds: tuple[str, ...] = CUE_KINDS,
        cue_distances: tuple[int, ...] = CUE_DISTANCES,
        object_size: int = 16,
        marker_size: int = 16,
        max_objects: int = 3,
        halo: int = 16,
        batch_size: int = 16,
        val_batch_size: int = 16,
        num_workers: int = 1,
        crop_size: int | None = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
        predict_path: str | None = None,
        recipe_global_batch: int | None = None,
    ) -> None:
        generator = {
            "image_size": image_size,
            "cue_kinds": tuple(cue_kinds),
            "cue_distances": tuple(cue_distances),
            "object_size": object_size,
            "marker_size": marker_size,
            "max_objects": max_objects,
            "halo": halo,
        }
        sizes = {"train": num_train, "val": num_val, "test": num_test}
        loading = (batch_size, val_batch_size, num_workers, crop_size, scale_range, predict_path, recipe_global_batch)
        super().__init__(sizes, seed, generator, *loading)


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 (``root`` = ``VOCdevkit`` or ``VOCdevkit/VOC2012``); DeepLab's 513 crop by default.

    ``train_split: train_aug`` (the papers' 10,582 images) reads the pre-converted ``SegmentationClassAug``
    layout, or assembles the split from the VOC and SBD releases when ``sbd_root`` is given. Any other split name
    is a list in ``ImageSets/Segmentation``. The splits are checked when the datamodule is set up.
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES
    palette = voc_palette()

    def __init__(
        self,
        root: str = "data/VOCdevkit",
        sbd_root: str | None = None,
        train_split: str = "train_aug",
        val_split: str = "val",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # batch 16, crop 513, scale 0.5-2.0: the base's defaults are VOC's
        self.root, self.sbd_root = root, sbd_root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def build(self, split: str) -> Dataset:
        if self.splits[split] != "train_aug":
            return VOCSegmentation(self.root, self.splits[split])
        dataset = TrainAugSegmentation(self.root, self.sbd_root)
        rank_zero_info(dataset.describe())
        return dataset


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations, 19 train ids (``root`` holds ``leftImg8bit/`` and ``gtFine/``).

    V3's recipe: crop 769, scale 0.5–2.0, batch 8, whole-image evaluation. The test split defaults to ``val``
    (the public test labels are empty); predictions can be written back as label ids for the official script.
    """

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(
        self,
        root: str = "data/cityscapes",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        batch_size: int = 8,
        crop_size: int | tuple[int, int] = 769,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, crop_size=crop_size, **kwargs)
        self.root = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def build(self, split: str) -> Dataset:
        return CityscapesSegmentation(self.root, self.splits[split])

    @staticmethod
    def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
        """Predicted train ids as the official label ids (ignore → 0, "unlabeled")."""
        return to_label_ids(train_ids)


class FolderDataModule(SegmentationDataModule):
    """Your own data: ``<root>/{train,val[,test]}/{images,masks}``, masks holding class indices.

    ``class_names`` sets the number of classes; ``colors`` (RGB per class) colour predictions and let RGB masks in
    those colours be read; ``ignore_label`` is the masks' "don't care" value (255 by default). The test split falls
    back to ``val`` when ``<root>/test`` does not exist.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str],
        colors: list[tuple[int, int, int]] | None = None,
        ignore_label: int = IGNORE_INDEX,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if colors is not None and len(colors) != len(class_names):
            raise ConfigError(f"{len(colors)} colors given for {len(class_names)} classes")
        self.root, self.class_names, self.ignore_label = root, tuple(class_names), ignore_label
        self.num_classes = len(class_names)
        self.palette = [tuple(c) for c in colors] if colors else voc_palette()

    def build(self, split: str) -> Dataset:
        if split == "test" and not (Path(self.root) / "test").is_dir():
            split = "val"
        return FolderSegmentation(self.root, split, self.num_classes, self.palette, self.ignore_label)
