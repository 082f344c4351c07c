"""Evaluation batches that never change a prediction: images are batched only with images of their own size.

Padding a batch of mixed sizes changes what the network sees (image pooling averages over the padding, border
convolutions read it), so an image's prediction would depend on its batch mates, the batch size and the number of
processes. Here every evaluation batch holds images of one size, unpadded: each image gets the prediction it gets
alone, and splits of one image size (Shapes, Cityscapes, crops) still run at full batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError


def image_size(dataset: Dataset, index: int) -> tuple[int, int] | None:
    """(H, W) of item ``index`` without decoding it: a generated dataset's fixed size or the image file's header;
    None when unknown (the item is then batched alone). Wrappers exposing ``.dataset`` are looked through, which
    holds for the evaluation transform (it keeps the size).
    """
    while not hasattr(dataset, "images") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if hasattr(dataset, "height") and hasattr(dataset, "width"):
        return int(dataset.height), int(dataset.width)
    images = getattr(dataset, "images", None)
    if images is None:
        return None
    try:
        with Image.open(images[index]) as im:
            return im.height, im.width
    except OSError:  # reading the item itself raises the DataError naming the file
        return None


class SizeGroupedSampler(UnrepeatedDistributedSampler):
    """This process's share of an evaluation split (each image to exactly one process, as
    ``UnrepeatedDistributedSampler``), yielded as lists of up to ``batch_size`` indices of images of one size.

    Use with ``DataLoader(dataset, batch_size=None, sampler=...)`` and a dataset that takes a list of indices
    (``Transformed``). Being a ``DistributedSampler``, Lightning keeps it under DDP. Per-process batch counts may
    differ: safe for evaluation, where DDP syncs buffers on the first batch only and metrics are reduced once, at
    epoch end. Sizes are read once, on first use.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        if batch_size < 1:
            raise ConfigError(f"val_batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self._batches: list[list[int]] | None = None

    def batches(self) -> list[list[int]]:
        if self._batches is None:
            groups: dict[Any, list[int]] = {}
            for index in super().__iter__():
                size = image_size(self.dataset, index)
                groups.setdefault(size if size is not None else ("alone", index), []).append(index)
            step = self.batch_size
            self._batches = [g[i : i + step] for g in groups.values() for i in range(0, len(g), step)]
        return self._batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def stack_pairs(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack (image, mask) pairs of one size (training crops are padded to the crop size by the transform)."""
    return torch.stack([img for img, _ in batch]), torch.stack([m for _, m in batch])  # (B, 3, H, W), (B, H, W)
