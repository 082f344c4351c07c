"""SBD (Semantic Boundaries Dataset) and DeepLab's ``train_aug`` split of VOC 2012 + SBD.

benchmark_RELEASE/dataset/img/<id>.jpg
benchmark_RELEASE/dataset/cls/<id>.mat              struct GTcls, field Segmentation: (H, W) labels 0-20
benchmark_RELEASE/dataset/{train,val}.txt

``train_aug`` = (VOC train ∪ SBD train ∪ SBD val) − VOC val: 10,582 images, either pre-converted as
VOCdevkit/VOC2012/SegmentationClassAug/<id>.png with a train_aug.txt list, or assembled from the two releases.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .voc import (
    VOC_CLASSES,
    DataError,
    VOCSegmentation,
    check_labels,
    check_listed,
    find_voc_root,
    load_pair,
    make_pair,
    read_image,
    read_split,
    voc_palette,
)

SBD_LAYOUT = "benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}"
RELEASES_LISTING = "train_aug (VOC train + SBD train + SBD val - VOC val)"


def read_sbd_mat(path: Path, num_classes: int = 21) -> np.ndarray:
    """The label map (H, W) uint8 of an SBD ``cls/<id>.mat``: ``GTcls.Segmentation``, as torchvision reads it."""
    try:
        with open(path, "rb") as f:
            mat = loadmat(f)
    except FileNotFoundError:
        raise DataError(f"mask {path} is missing") from None
    except Exception as err:  # scipy raises many types on a damaged file
        raise DataError(f"mask {path} is not a readable .mat file: {err}") from None
    gt = mat.get("GTcls")
    names = getattr(getattr(gt, "dtype", None), "names", None) or ()
    if "Segmentation" not in names or gt.size == 0:
        raise DataError(f"mask {path} has no GTcls.Segmentation field; expected an SBD cls/<id>.mat")
    labels = np.asarray(gt.flat[0]["Segmentation"])  # mat["GTcls"][0]["Segmentation"][0] for the 1x1 struct
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise DataError(
            f"mask {path} has GTcls.Segmentation of type {labels.dtype} and shape {labels.shape}; "
            "expected an integer (H, W) label map"
        )
    return check_labels(labels.astype(np.int64), num_classes, path)


def load_sbd_pair(image: Path, mask: Path, num_classes: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Read and check one (jpg, mat) pair: same size, labels in range."""
    return make_pair(image, read_image(image), mask, read_sbd_mat(mask, num_classes))


class SBDSegmentation(Dataset):
    """SBD segmentation (``cls`` annotations). ``root`` is ``benchmark_RELEASE`` or ``benchmark_RELEASE/dataset``.

    Construction is the cheap check: layout, split list, every listed file present, the first pair decodes.
    """

    num_classes = len(VOC_CLASSES)

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        if (root / "dataset").is_dir():
            root = root / "dataset"
        missing = [d for d in ("img", "cls") if not (root / d).is_dir()]
        if missing:
            raise DataError(f"{root} is not an SBD root: missing {', '.join(missing)}; expected {SBD_LAYOUT}")
        self.root = root
        self.ids = read_split(root / f"{split}.txt")
        self.images = [root / "img" / f"{i}.jpg" for i in self.ids]
        self.masks = [root / "cls" / f"{i}.mat" for i in self.ids]
        check_listed(self.images, self.masks, f"{split}.txt")
        self[0]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        return load_sbd_pair(self.images[index], self.masks[index], self.num_classes)


def train_aug_ids(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str], sbd_val: Iterable[str]
) -> list[str]:
    """DeepLab's ``train_aug`` ids: (VOC train ∪ SBD train ∪ SBD val) − VOC val, sorted."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


class TrainAugSegmentation(Dataset):
    """VOC 2012 ``train_aug`` (VOC train + SBD, without VOC val). ``voc_root`` is ``VOCdevkit`` or ``VOC2012``.

    Without ``sbd_root``: the pre-converted ``VOC2012/SegmentationClassAug/<id>.png`` with the list
    ``VOC2012/ImageSets/Segmentation/train_aug.txt`` (or ``VOC2012/train_aug.txt``). With ``sbd_root``: assembled
    from the releases, masks from VOC ``SegmentationClass`` for VOC trainval ids and SBD ``cls/<id>.mat`` otherwise.
    Either way a list that overlaps VOC val is refused, and construction checks every file and decodes the first pair.
    """

    num_classes = len(VOC_CLASSES)

    def __init__(self, voc_root: str | Path, sbd_root: str | Path | None = None) -> None:
        voc = find_voc_root(voc_root)
        if sbd_root is None:
            self._from_aug_dir(voc)
        else:
            self._from_releases(voc, sbd_root)
        val = voc / "ImageSets/Segmentation/val.txt"
        if val.is_file():
            overlap = sorted(set(self.ids) & set(read_split(val)))
            if overlap:
                raise DataError(
                    f"{self.listing} lists {len(overlap)} VOC val images ({', '.join(overlap[:5])}"
                    f"{', ...' if len(overlap) > 5 else ''}); train_aug must exclude {val}"
                )
        check_listed(self.images, self.masks, self.listing)
        self.palette = voc_palette()
        self[0]

    def _from_aug_dir(self, voc: Path) -> None:
        lists = [voc / "ImageSets/Segmentation/train_aug.txt", voc / "train_aug.txt"]
        listing = next((p for p in lists if p.is_file()), None)
        missing = [d for d in ("JPEGImages", "SegmentationClassAug") if not (voc / d).is_dir()]
        if missing or listing is None:
            raise DataError(
                f"{voc} has no pre-converted train_aug: missing {', '.join(missing) or 'train_aug.txt'}; expected "
                "VOCdevkit/VOC2012/{JPEGImages, SegmentationClassAug, ImageSets/Segmentation/train_aug.txt}, "
                "or pass the SBD root to assemble it from the releases"
            )
        self.listing = listing
        self.ids = list(dict.fromkeys(Path(token).stem for token in read_split(listing)))
        self.images = [voc / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [voc / "SegmentationClassAug" / f"{i}.png" for i in self.ids]
        train = voc / "ImageSets/Segmentation/train.txt"
        self.from_voc = len(set(self.ids) & set(read_split(train))) if train.is_file() else None

    def _from_releases(self, voc: Path, sbd_root: str | Path) -> None:
        voc_train = VOCSegmentation(voc, "train").ids
        voc_val = read_split(voc / "ImageSets/Segmentation/val.txt")
        sbd_train, sbd_val = SBDSegmentation(sbd_root, "train"), SBDSegmentation(sbd_root, "val")
        sbd = sbd_train.root
        annotated = set(voc_train) | set(voc_val)
        self.listing = RELEASES_LISTING
        self.ids = train_aug_ids(voc_train, voc_val, sbd_train.ids, sbd_val.ids)
        self.images = [voc / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.images = [p if p.is_file() else sbd / "img" / p.name for p in self.images]
        self.masks = [
            voc / "SegmentationClass" / f"{i}.png" if i in annotated else sbd / "cls" / f"{i}.mat" for i in self.ids
        ]
        self.from_voc = sum(i in annotated for i in self.ids)

    def describe(self) -> str:
        """One line for the log: how many images, and how many come from VOC train."""
        if self.from_voc is None:
            return f"train_aug: {len(self)} images from {self.listing}"
        return f"train_aug: {len(self)} images (VOC train {self.from_voc} + SBD {len(self) - self.from_voc})"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.images[index], self.masks[index]
        if mask.suffix == ".mat":
            return load_sbd_pair(image, mask, self.num_classes)
        return load_pair(image, mask, self.num_classes, self.palette)
