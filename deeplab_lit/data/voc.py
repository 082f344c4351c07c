"""PASCAL VOC 2012 segmentation in its on-disk layout, with checks that name the file and the problem.

VOCdevkit/VOC2012/JPEGImages/<id>.jpg
VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG: pixel values are labels, 255 = boundary
VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .transforms import IGNORE_INDEX

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """VOC's colour map: the bits of the label spread over the high bits of R, G and B."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def read_image(path: Path) -> np.ndarray:
    """An RGB image (H, W, 3) uint8, the one reader of training, evaluation and predict. Grayscale/RGBA/CMYK are
    converted (alpha dropped). 16-bit images (grayscale PNG/TIFF, Pillow modes ``I;16*`` and ``I``; RGB(A) PNG) are
    scaled to 8 bits as value / 257, rounded (65535 → 255), where a plain conversion would clip grayscale above 255.
    Floating-point images and values outside [0, 65535] raise ``DataError``, as do unreadable files.
    """
    try:
        with Image.open(path) as im:
            low_byte_tiles = _low_byte_tiles(im)
            im.load()
            if im.mode.startswith("I"):
                return _to_8_bit(np.asarray(im), path)
            if im.mode == "F":
                raise DataError(
                    f"image {path} holds floating-point values (mode F), which have no agreed scale; "
                    "save it with 8 or 16 bits per channel"
                )
            if low_byte_tiles:
                return _to_8_bit(_sixteen_bit_png(path, np.asarray(im), low_byte_tiles), path)
            return np.array(im.convert("RGB"))  # writable, as torch.from_numpy wants
    except FileNotFoundError:
        raise DataError(f"image {path} is missing") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"image {path} is corrupt or truncated: {err}") from None


def _low_byte_tiles(im: Image.Image) -> list | None:
    """For a 16-bit RGB(A) PNG, which Pillow decodes to each value's high byte: the same tiles read as little-endian,
    i.e. yielding each big-endian value's low byte. None for any other image."""
    rawmodes = [t.args for t in im.tile] if im.format == "PNG" else []
    if not rawmodes or not all(isinstance(r, str) and r in ("RGB;16B", "RGBA;16B") for r in rawmodes):
        return None
    return [t._replace(args=t.args[:-1] + "L") for t in im.tile]


def _sixteen_bit_png(path: Path, high: np.ndarray, low_byte_tiles: list) -> np.ndarray:
    with Image.open(path) as im:
        im.tile = low_byte_tiles
        im.load()
        low = np.asarray(im)
    return (high.astype(np.int64) << 8 | low)[..., :3]  # (H, W, 3) 16-bit values, alpha dropped


def _to_8_bit(values: np.ndarray, path: Path) -> np.ndarray:
    """16-bit values (H, W) or (H, W, 3) as RGB uint8: value / 257, rounded (in integers)."""
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise DataError(f"image {path} has values in [{low}, {high}], outside the 16-bit range [0, 65535]")
    scaled = ((values + 128) // 257).astype(np.uint8)
    return scaled if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=2)  # (H, W, 3)


def read_label_png(path: Path, palette: list | None = None, num_classes: int = 0) -> np.ndarray:
    """The pixel values (H, W) int64 of a palette or grayscale PNG; an RGB mask only through ``palette``."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "I", "I;16"):
                return np.asarray(im if im.mode in ("P", "L") else im.convert("I")).astype(np.int64)
            if im.mode in ("RGB", "RGBA") and palette is not None:
                return _labels_from_colours(np.asarray(im.convert("RGB")), palette, num_classes, path)
            raise DataError(f"mask {path} has mode {im.mode}; expected a palette or grayscale PNG")
    except FileNotFoundError:
        raise DataError(f"mask {path} is missing") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"mask {path} is corrupt or truncated: {err}") from None


def read_mask(path: Path, num_classes: int, palette: list[tuple[int, int, int]] | None = None) -> np.ndarray:
    """A label map (H, W) uint8 from a palette or grayscale PNG; an RGB mask only in the dataset's palette."""
    return check_labels(read_label_png(path, palette, num_classes), num_classes, path)


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """The label map as uint8 once every value is in [0, num_classes) or 255; ``path`` names the file in errors."""
    bad = np.unique(labels[((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_INDEX)])
    if bad.size:
        raise DataError(
            f"mask {path} has label values {bad[:10].tolist()} outside [0, {num_classes}) and {IGNORE_INDEX}"
        )
    return labels.astype(np.uint8)


def _labels_from_colours(rgb: np.ndarray, palette: list, num_classes: int, path: Path) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette[:num_classes])}
    table[(224 << 16) | (224 << 8) | 192] = IGNORE_INDEX  # VOC's boundary colour
    values, inverse = np.unique(codes, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in table]
    if unknown:
        colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:5]]
        raise DataError(f"mask {path} is an RGB image with colours {colours} that are not in the class palette")
    return np.array([table[v] for v in values.tolist()])[inverse].reshape(codes.shape)


def read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"split file {path} is missing")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file {path} is empty")
    return ids


def load_pair(image: Path, mask: Path, num_classes: int, palette: list) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Read and check one (image, mask) pair: same size, labels in range."""
    return make_pair(image, read_image(image), mask, read_mask(mask, num_classes, palette))


def make_pair(image: Path, rgb: np.ndarray, mask: Path, labels: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Tensors of a decoded (image, mask) pair, checked to be the same size; the paths name the files in errors."""
    if rgb.shape[:2] != labels.shape:
        raise DataError(
            f"mask {mask} is {labels.shape[1]}x{labels.shape[0]} but image {image} is {rgb.shape[1]}x{rgb.shape[0]}"
        )
    return (
        tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1)),  # (3, H, W) uint8
        tv_tensors.Mask(torch.from_numpy(labels)),  # (H, W) uint8; the transforms make it int64
    )


def check_listed(images: list[Path], masks: list[Path], listing: str | Path) -> None:
    """Every listed image and mask is a file; the first missing one raises ``DataError`` naming the list."""
    for image, mask in zip(images, masks, strict=True):
        for path, kind in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                raise DataError(f"{kind} {path} listed in {listing} is missing")


def find_voc_root(root: str | Path) -> Path:
    """``VOCdevkit/VOC2012`` given either ``VOCdevkit`` or ``VOCdevkit/VOC2012``."""
    root = Path(root)
    return root / "VOC2012" if (root / "VOC2012").is_dir() else root


class VOCSegmentation(Dataset):
    """VOC 2012 segmentation. ``root`` is ``VOCdevkit`` or ``VOCdevkit/VOC2012``.

    Construction is the cheap check: layout, split list, every listed file present, the first pair decodes.
    """

    num_classes = len(VOC_CLASSES)

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = find_voc_root(root)
        expected = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")
        missing = [d for d in expected if not (root / d).is_dir()]
        if missing:
            raise DataError(
                f"{root} is not a VOC 2012 root: missing {', '.join(missing)}; expected VOCdevkit/VOC2012/"
                "{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt}"
            )
        self.ids = read_split(root / "ImageSets/Segmentation" / f"{split}.txt")
        self.images = [root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [root / "SegmentationClass" / f"{i}.png" for i in self.ids]
        check_listed(self.images, self.masks, f"{split}.txt")
        self.palette = voc_palette()
        self[0]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        return load_pair(self.images[index], self.masks[index], self.num_classes, self.palette)
