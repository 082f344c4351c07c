"""Cityscapes fine annotations in their on-disk layout, with checks that name the file and the problem.

leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png         grayscale PNG: pixel values are labelIds 0..33
gtFine/{train,val,test}/<city>/<name>_gtFine_labelTrainIds.png    optional (createTrainIdLabelImgs): 0..18, 255

The class table is cityscapesscripts' own: 19 train ids, everything else ignored (255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .transforms import IGNORE_INDEX
from .voc import DataError, make_pair, read_image, read_label_png, read_mask

_TRAIN_LABELS = sorted((label for label in _LABELS if 0 <= label.trainId < IGNORE_INDEX), key=lambda x: x.trainId)

CITYSCAPES_CLASSES = tuple(label.name for label in _TRAIN_LABELS)
CITYSCAPES_PALETTE = [tuple(label.color) for label in _TRAIN_LABELS]
LABEL_IDS = np.array(sorted(label.id for label in _LABELS if label.id >= 0), dtype=np.int64)

TRAINID_TO_ID = np.array([label.id for label in _TRAIN_LABELS], dtype=np.uint8)
ID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # ignored classes and unknown ids -> 255
ID_TO_TRAINID[TRAINID_TO_ID] = np.arange(len(TRAINID_TO_ID))

_TRAINID_TO_ID_LUT = np.zeros(256, dtype=np.uint8)  # 255 (ignore) and anything unused -> 0, "unlabeled"
_TRAINID_TO_ID_LUT[: len(TRAINID_TO_ID)] = TRAINID_TO_ID

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LAYOUT = (
    f"<root>/leftImg8bit/<split>/<city>/<name>{IMAGE_SUFFIX} and <root>/gtFine/<split>/<city>/<name>{LABEL_IDS_SUFFIX}"
)


def read_label_ids(path: Path) -> np.ndarray:
    """A train-id map (H, W) uint8 from a ``*_gtFine_labelIds.png``; ids outside the Cityscapes table raise."""
    ids = read_label_png(path)
    bad = np.unique(ids[~np.isin(ids, LABEL_IDS)])
    if bad.size:
        raise DataError(
            f"mask {path} has label ids {bad[:10].tolist()} that are not Cityscapes labelIds "
            f"({LABEL_IDS.min()}..{LABEL_IDS.max()})"
        )
    return ID_TO_TRAINID[ids]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Label ids (uint8) of a train-id map, as the official evaluation reads them; 255 (ignore) becomes 0."""
    train_ids = np.asarray(train_ids)
    if not np.issubdtype(train_ids.dtype, np.integer):
        raise ValueError(f"train ids must be integers, got dtype {train_ids.dtype}")
    bad = np.unique(train_ids[((train_ids < 0) | (train_ids >= len(TRAINID_TO_ID))) & (train_ids != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"train ids {bad[:10].tolist()} are outside [0, {len(TRAINID_TO_ID)}) and {IGNORE_INDEX}")
    return _TRAINID_TO_ID_LUT[train_ids]


def write_label_ids(path: str | Path, train_ids: np.ndarray) -> None:
    """Write a predicted train-id map (H, W) as the grayscale labelIds PNG ``evalPixelLevelSemanticLabeling`` reads."""
    label_ids = to_label_ids(train_ids)
    if label_ids.ndim != 2:
        raise ValueError(f"a label map is (H, W), got shape {tuple(label_ids.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids).save(path, format="PNG")


class CityscapesSegmentation(Dataset):
    """Cityscapes fine annotations as 19 train ids (255 ignored). ``root`` holds ``leftImg8bit/`` and ``gtFine/``.

    Labels come from ``<name>_gtFine_labelTrainIds.png`` where it exists, else ``<name>_gtFine_labelIds.png``
    mapped through ``ID_TO_TRAINID``. Construction is the cheap check: layout, the split's images, every image's
    label file present, the first pair decodes.
    """

    num_classes = len(CITYSCAPES_CLASSES)

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        missing = [d for d in ("leftImg8bit", "gtFine") if not (root / d).is_dir()]
        if missing:
            raise DataError(f"{root} is not a Cityscapes root: missing {', '.join(missing)}; expected {LAYOUT}")
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(f"split folder {folder} is missing; expected {LAYOUT}")
        self.images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"), key=lambda p: (p.parent.name, p.name))
        if not self.images:
            raise DataError(f"split folder {image_dir} has no <city>/<name>{IMAGE_SUFFIX} images")
        self.targets = []
        for image in self.images:
            city, name = label_dir / image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
            target = city / f"{name}{TRAIN_IDS_SUFFIX}"
            if not target.is_file():
                target = city / f"{name}{LABEL_IDS_SUFFIX}"
            if not target.is_file():
                raise DataError(f"label file {target} for image {image} is missing")
            self.targets.append(target)
        self.palette = CITYSCAPES_PALETTE
        self[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, target = self.images[index], self.targets[index]
        rgb = read_image(image)
        if target.name.endswith(TRAIN_IDS_SUFFIX):
            labels = read_mask(target, self.num_classes)
        else:
            labels = read_label_ids(target)
        return make_pair(image, rgb, target, labels)
