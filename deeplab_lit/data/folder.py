"""Custom data: ``images/`` and ``masks/`` folders paired by file stem, with a class list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import tv_tensors

from .transforms import IGNORE_INDEX
from .voc import IMAGE_SUFFIXES, DataError, check_labels, make_pair, read_image, read_label_png, voc_palette


def by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """``{stem: file}``; two files with one stem (``x.jpg`` and ``x.png``) raise ``DataError`` naming both, as
    pairing by stem would drop one of them."""
    found: dict[str, Path] = {}
    for path in sorted(files):
        if path.stem in found:
            raise DataError(
                f"{found[path.stem]} and {path} share the stem {path.stem!r}: files are paired by stem, so one of them "
                "would be dropped; rename or remove one"
            )
        found[path.stem] = path
    return found


class FolderSegmentation(Dataset):
    """``<root>/<split>/images/<stem>.<ext>`` with ``<root>/<split>/masks/<stem>.png`` (labels as pixel values).

    Construction checks the layout, that every image has its mask (and the reverse), and decodes one pair.
    ``ignore_label``: the masks' "don't care" value, read as 255 (the ignore label everywhere downstream).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_classes: int,
        palette: Sequence | None = None,
        ignore_label: int = IGNORE_INDEX,
    ) -> None:
        folder = Path(root) / split
        images_dir, masks_dir = folder / "images", folder / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise DataError(f"{d} is missing; expected {folder}/images/<stem>.<ext> and {folder}/masks/<stem>.png")
        images = by_stem(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = by_stem(p for p in masks_dir.iterdir() if p.suffix.lower() == ".png")
        if not images:
            raise DataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            stem = unpaired[0]
            which = (
                f"image {images[stem]} has no mask in {masks_dir}"
                if stem in images
                else (f"mask {masks[stem]} has no image in {images_dir}")
            )
            raise DataError(f"{which} ({len(unpaired)} unpaired)")
        self.stems = sorted(images)
        self.images = [images[s] for s in self.stems]
        self.masks = [masks[s] for s in self.stems]
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.palette = list(palette) if palette else voc_palette()
        self[0]

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.images[index], self.masks[index]
        labels = read_label_png(mask, self.palette, self.num_classes)
        if self.ignore_label != IGNORE_INDEX:
            labels[labels == self.ignore_label] = IGNORE_INDEX
        return make_pair(image, read_image(image), mask, check_labels(labels, self.num_classes, mask))
