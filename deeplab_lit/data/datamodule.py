"""LightningDataModules: the shared loader logic, the built-in Shapes and Context data, and images to predict on."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import tv_tensors

from ..errors import ConfigError, DataError
from .batching import SizeGroupedSampler, stack_pairs
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation, to_label_ids
from .context import CONTEXT_CLASSES, CONTEXT_PALETTE, CUE_KINDS, ContextShapesDataset
from .folder import FolderSegmentation
from .sbd import TrainAugSegmentation
from .shapes import ShapesDataset, check_shapes, shapes_palette
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, EvalPreset, TrainPreset
from .voc import IMAGE_SUFFIXES, VOC_CLASSES, VOCSegmentation, read_image, voc_palette


class Transformed(Dataset):
    """Apply a joint (image, mask) transform to a dataset of ``(tv_tensors.Image, tv_tensors.Mask)``.

    A key ``(index, seed)`` (from :class:`SeededSampler`) runs the transform with torch's generator seeded by
    ``seed`` and restored afterwards; a plain ``index`` uses the generator as it is; a list of indices (a batch from
    :class:`SizeGroupedSampler`) gives the list of their items.
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int] | list[int]) -> Any:
        if isinstance(key, list):
            return [self[i] for i in key]
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only, where the transforms draw: torch.manual_seed also queues a seed for every
                # accelerator API (CUDA, XPU, MTIA), recording the call stack each time: a third of a cached Shapes
                # sample's cost in a loader. The CPU generator's state is the same either way.
                torch.random.default_generator.manual_seed(seed)
                return self.transform(*self.dataset[index])
        return self.transform(*self.dataset[key])


class SeededSampler(DistributedSampler):
    """This process's shuffled share of the training set, each index paired with the seed of its augmentation.

    Order and seeds depend only on (seed, epoch, index): not on the number of loader workers, nor on what ran
    before in the process. A run resumed from an epoch-end checkpoint (after being killed mid-epoch) therefore
    sees the very batches an uninterrupted run sees. Lightning calls ``set_epoch`` every epoch.
    """

    def __iter__(self):
        for index in super().__iter__():
            yield index, int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


def list_images(path: str | Path) -> list[Path]:
    """An image file, or the image files of a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"predict path {path} (--data.init_args.predict_path) is neither an image file nor a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path} (--data.init_args.predict_path)")
    return files


def output_names(path: str | Path, files: Sequence[Path]) -> list[str]:
    """Each input's output name: its path under the predict folder without suffix (``a/x`` for ``a/x.jpg``), or
    the stem of a single file. Two inputs with one name (``x.jpg`` and ``x.png``) raise ``DataError`` naming both:
    one's outputs would overwrite the other's.
    """
    path = Path(path)
    names: dict[str, Path] = {}
    for file in files:
        name = file.stem if file == path else file.relative_to(path).with_suffix("").as_posix()
        if name in names:
            raise DataError(
                f"{names[name]} and {file} would both be written as {name}.png; rename one or predict them separately"
            )
        names[name] = file
    return list(names)


class PredictImages(Dataset):
    """Images to segment, read as training reads them. An unreadable file yields an item with ``error`` set, so the
    run goes on; ``name`` is where its outputs go under the output folder (see :func:`output_names`).
    """

    def __init__(self, path: str | Path, mean: Sequence[float], std: Sequence[float]) -> None:
        self.files = list_images(path)
        self.names = output_names(path, self.files)
        self.transform = EvalPreset(mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.files[index], self.names[index]
        try:
            raw = torch.from_numpy(read_image(path)).permute(2, 0, 1)  # (3, H, W) uint8
        except DataError as err:
            return {
                "path": str(path),
                "name": name,
                "error": str(err),
                "image": torch.zeros(3, 1, 1),
                "raw": torch.zeros(3, 1, 1, dtype=torch.uint8),
            }
        image = self.transform(tv_tensors.Image(raw))
        return {"path": str(path), "name": name, "error": "", "image": image, "raw": raw}


class SegmentationDataModule(L.LightningDataModule):
    """Loaders shared by every dataset. Subclasses set ``num_classes``, ``class_names``, ``palette`` and
    implement ``build(split)`` returning a dataset of ``(tv_tensors.Image uint8, tv_tensors.Mask uint8)`` pairs.

    ``setup`` builds every split the stage needs, so a wrong root or a broken list fails before the first step.
    ``recipe_global_batch`` is the global batch (per optimizer step) a recipe's learning rate and steps are meant
    for: ``fit`` warns when ``batch_size`` × processes × accumulation differs from it.
    """

    num_classes: int
    class_names: tuple[str, ...]
    palette: Sequence[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 4,
        crop_size: int | tuple[int, int] = 513,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        predict_path: str | None = None,
        photometric: bool = False,
        recipe_global_batch: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            # BN after image pooling sees one value per channel per image: batch 1 cannot train it
            raise ConfigError(f"batch_size must be at least 2 for BatchNorm in training, got {batch_size}")
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.crop_size, self.scale_range, self.scale_step = crop_size, scale_range, scale_step
        self.mean, self.std = mean, std
        self.predict_path, self.photometric = predict_path, photometric
        self.recipe_global_batch = recipe_global_batch
        self._datasets: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train", "val" or "test"), checked as it is built."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        if split not in self._datasets:
            self._datasets[split] = self.build(split)
        return self._datasets[split]

    def setup(self, stage: str) -> None:
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ()):
            self.dataset(split)
        self._check_every_process_has_data(stage)

    def _check_every_process_has_data(self, stage: str) -> None:
        """Refuse a run in which a process would get no image to evaluate or predict. Lightning skips such a
        process's loop and its hooks while the others enter collective calls (metric sync, ``trainer.log_dir``,
        the prediction writer's gather): a hang until the NCCL timeout. Every process checks the same numbers, so
        every process raises."""
        trainer = self.trainer
        if trainer is None or trainer.world_size < 2:
            return
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        if stage == "predict":
            count, what = len(list_images(self.predict_path)) if self.predict_path else 0, "image(s) to predict"
        elif stage == "fit" and trainer.limit_val_batches != 0:
            count, what = len(self.dataset("val")), "validation image(s)"
        elif stage in ("validate", "test"):
            split = "val" if stage == "validate" else "test"
            count, what = len(self.dataset(split)), f"{split} image(s)"
        else:
            return
        world = trainer.world_size
        if 0 < count < world:
            raise ConfigError(
                f"{stage} has {count} {what} for {world} processes (devices × nodes): a process without an image "
                f"would wait for the others forever; run it on at most {count} process(es) "
                f"(--trainer.devices {count}), or give it at least {world} images"
            )

    def train_transform(self) -> Callable:
        return TrainPreset(
            self.crop_size,
            self.scale_range,
            self.scale_step,
            mean=self.mean,
            std=self.std,
            ignore_index=self.ignore_index,
            photometric=self.photometric,
        )

    def _sampler(self, dataset: Dataset, train: bool) -> Sampler:
        """Training: a :class:`SeededSampler` (a ``DistributedSampler``, shuffled and padded so every process runs
        as many steps; one process is a world of one). Evaluation: a :class:`SizeGroupedSampler`, which gives each
        image to exactly one process (Lightning's own sampler pads the split with repeated images that the metrics
        would count twice) and batches only images of one size, so no image is padded. Lightning keeps a loader
        whose sampler is already a ``DistributedSampler``, so this holds whatever ``use_distributed_sampler`` is;
        predict is left to Lightning, which already splits it without repeats.
        """
        trainer = self.trainer
        several = trainer is not None and trainer.world_size > 1
        kwargs = trainer.distributed_sampler_kwargs if several else {"num_replicas": 1, "rank": 0}
        if not train:
            return SizeGroupedSampler(dataset, self.val_batch_size, **kwargs)
        seed = int(os.getenv("PL_GLOBAL_SEED", 0))  # as Lightning's sampler: seed_everything sets it
        shuffle = trainer is None or not trainer.overfit_batches
        sampler = SeededSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False, **kwargs)
        # the epoch Lightning passes to ``set_epoch`` (after the loader's first batch is drawn): right on resuming
        sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0)
        return sampler

    def _log_batch_size(self) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        message = (
            f"batch {self.batch_size} per device × {trainer.num_devices} devices × {trainer.num_nodes} nodes"
            f" = global {self.batch_size * trainer.world_size}"
        )
        if trainer.accumulate_grad_batches > 1:
            k = trainer.accumulate_grad_batches
            message += f" (× {k} accumulated = {self.batch_size * trainer.world_size * k} per optimizer step)"
        rank_zero_info(message)
        run = self.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        recipe = self.recipe_global_batch
        if recipe is not None and run != recipe:
            per_device, rest = divmod(recipe, trainer.world_size * trainer.accumulate_grad_batches)
            fix = f"--data.init_args.batch_size {per_device}" if per_device and not rest else "a batch_size"
            rank_zero_warn(
                f"the recipe's learning rate and steps are meant for a global batch of {recipe} "
                f"(recipe_global_batch); this run's is {run} ({message}). Use {fix} to train with the recipe's "
                f"global batch on {trainer.world_size} process(es), or scale the learning rate and steps yourself "
                "and set --data.init_args.recipe_global_batch to match"
            )

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        sampler = self._sampler(dataset, train)
        common = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": stack_pairs,
        }
        if train:
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True, **common)
        # the sampler yields whole batches (index lists of one image size): no automatic batching
        return DataLoader(dataset, batch_size=None, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        self._log_batch_size()
        return self._loader(Transformed(self.dataset("train"), self.train_transform()), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Transformed(self.dataset("val"), EvalPreset(self.mean, self.std)))

    def test_dataloader(self) -> DataLoader:
        return self._loader(Transformed(self.dataset("test"), EvalPreset(self.mean, self.std)))

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ConfigError("predict needs images: pass --data.predict_path FILE_OR_FOLDER")
        return DataLoader(
            PredictImages(self.predict_path, self.mean, self.std), batch_size=1, num_workers=self.num_workers
        )


class ShapesDataModule(SegmentationDataModule):
    """The built-in Shapes data (see ``ShapesDataset``): no download, deterministic by seed.

    Splits use disjoint seeds (train ``seed``, val ``seed + 1``, test ``seed + 2``). ``object_scale``,
    ``max_objects``, ``shapes``, ``textured`` and ``clutter`` set the generator; ``scale_range`` is the training
    augmentation's random rescale, as for the other datasets.
    """

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
        super().__init__(
            batch_size,
            val_batch_size,
            num_workers,
            crop_size or image_size,
            scale_range,
            predict_path=predict_path,
            recipe_global_batch=recipe_global_batch,
        )
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.generator = {
            "image_size": image_size,
            "scale_range": tuple(object_scale),
            "max_objects": max_objects,
            "shapes": check_shapes(shapes),
            "textured": textured,
            "clutter": clutter,
            "ignore_band": ignore_band,
        }
        self.class_names = ("background", *self.generator["shapes"])
        self.num_classes = len(self.class_names)
        self.palette = shapes_palette(self.generator["shapes"])

    def build(self, split: str) -> Dataset:
        offset = ("train", "val", "test").index(split)
        return ShapesDataset(self.sizes[split], seed=self.seed + offset, cache=True, **self.generator)


class ContextDataModule(SegmentationDataModule):
    """The built-in context task (see ``ContextShapesDataset``): the class of an object is told by a cue at a
    known distance (``local``) or by the background (``global``). No download, deterministic by seed.

    Splits use disjoint seeds (train ``seed``, val ``seed + 1``, test ``seed + 2``). A test split with one cue
    (``--data.init_args.cue_kinds [local] --data.init_args.cue_distances [96]``) scores one distance. Training
    does not rescale (``scale_range`` 1–1): a rescaled image would move its cues off their distances.
    """

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
        cue_distances: tuple[int, ...] = (48, 96, 144, 192),
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
        super().__init__(
            batch_size,
            val_batch_size,
            num_workers,
            crop_size or image_size,
            scale_range,
            predict_path=predict_path,
            recipe_global_batch=recipe_global_batch,
        )
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.generator = {
            "image_size": image_size,
            "cue_kinds": tuple(cue_kinds),
            "cue_distances": tuple(cue_distances),
            "object_size": object_size,
            "marker_size": marker_size,
            "max_objects": max_objects,
            "halo": halo,
        }
        ContextShapesDataset(1, **self.generator)  # a wrong argument fails here, before any training

    def build(self, split: str) -> Dataset:
        offset = ("train", "val", "test").index(split)
        return ContextShapesDataset(self.sizes[split], seed=self.seed + offset, cache=True, **self.generator)


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
