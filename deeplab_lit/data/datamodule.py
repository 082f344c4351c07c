"""The LightningDataModule every data source shares: loaders, samplers, augmentation, checks; the sources themselves
are in ``modules.py``, the images to predict on in ``predict.py``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import ConfigError
from .batching import SizeGroupedSampler, stack_pairs
from .predict import PredictImages, list_images
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, EvalPreset, TrainPreset


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
