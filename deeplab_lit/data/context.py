"""Context: a synthetic segmentation task whose answer sits at a known distance from the object.

Every object looks the same whatever its class (one disc size, its colour drawn from one pool for all classes),
so the object alone cannot tell its class; a cue elsewhere in the image does. Two kinds of cue:

- ``local``: one object and one square **marker** whose colour names the class (the marker is labelled
  background), at distance ``D`` from the object's centre along one of the 8 axis/diagonal directions, i.e. offset
  ``(±D, 0)``, ``(0, ±D)`` or ``(±D, ±D)``: exactly where a 3×3 atrous tap at rate ``D / output_stride`` lands.
- ``global``: no marker; the background's stripes (horizontal, vertical or a checkerboard) decide the class of every
  object in the image. A plain ``halo`` around each object keeps the pattern out of the object's neighbourhood, so
  the cue needs context too.

With the defaults (256-px images, distances 48, 96, 144, 192 px) the distances are 6, 12, 18 and 24 cells at
output stride 8: V2's ASPP-L rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import ConfigError

CONTEXT_CLASSES: tuple[str, ...] = ("background", "A", "B", "C")
CONTEXT_PALETTE: list[tuple[int, int, int]] = [(0, 0, 0), (220, 40, 40), (40, 200, 40), (40, 80, 230)]
MARKER_COLOURS = np.array(CONTEXT_PALETTE[1:], dtype=np.float64)  # marker k + 1 names class k + 1
OBJECT_COLOURS = np.array([(240, 220, 40), (40, 220, 220), (235, 235, 235), (250, 150, 30)], dtype=np.float64)
PATTERNS = ("horizontal", "vertical", "checker")  # the global cue of classes 1, 2, 3
DIRECTIONS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
CUE_KINDS = ("local", "global")
CUE_DISTANCES = (48, 96, 144, 192)  # px: 6, 12, 18, 24 cells at output stride 8, V2's ASPP-L rates
STRIPE = 4  # stripe width in px (period 8)
CONTRAST = 35.0  # stripe levels: background grey ± this
NOISE = 6.0  # per-pixel Gaussian noise on the whole image


def _check(cue_kinds: Sequence[str], cue_distances: Sequence[int], image_size: int, sizes: tuple[int, int]) -> None:
    object_size, marker_size = sizes
    if not cue_kinds or len(set(cue_kinds)) != len(cue_kinds) or set(cue_kinds) - set(CUE_KINDS):
        raise ConfigError(
            f"cue_kinds must be distinct names from {CUE_KINDS}, got {list(cue_kinds)!r} (--data.init_args.cue_kinds)"
        )
    if not 4 <= object_size <= image_size // 4:
        raise ConfigError(
            f"object_size must be in [4, image_size / 4 = {image_size // 4}], got {object_size!r} "
            "(--data.init_args.object_size)"
        )
    if marker_size < object_size or (marker_size - object_size) % 2:
        raise ConfigError(
            f"marker_size must be >= object_size ({object_size}) and differ from it by an even number, so that "
            f"every object pixel's offset lands on the marker; got {marker_size!r} (--data.init_args.marker_size)"
        )
    reach = image_size - (object_size + marker_size) // 2  # the object and its marker both inside the image
    if "local" in cue_kinds and (
        not cue_distances or any(not isinstance(d, int) or not 0 < d <= reach for d in cue_distances)
    ):
        raise ConfigError(
            f"cue_distances must be a non-empty list of integers in [1, {reach}] px for {image_size}-px images and "
            f"{object_size}/{marker_size}-px objects/markers, got {list(cue_distances)!r} "
            "(--data.init_args.cue_distances)"
        )


def _disc(size: int) -> np.ndarray:
    """Boolean disc inscribed in a size × size box."""
    c = np.arange(size) + 0.5 - size / 2
    return c[:, None] ** 2 + c[None, :] ** 2 <= (size / 2) ** 2


def _stripes(pattern: str, height: int, width: int) -> np.ndarray:
    """0/1 map of a background pattern: horizontal or vertical stripes, or a checkerboard."""
    ys, xs = np.arange(height)[:, None] // STRIPE % 2, np.arange(width)[None, :] // STRIPE % 2
    if pattern == "horizontal":
        return np.broadcast_to(ys, (height, width))
    if pattern == "vertical":
        return np.broadcast_to(xs, (height, width))
    return ys ^ xs


def render_context(
    rng: np.random.Generator,
    image_size: int = 256,
    cue_kinds: Sequence[str] = CUE_KINDS,
    cue_distances: Sequence[int] = CUE_DISTANCES,
    object_size: int = 16,
    marker_size: int = 16,
    max_objects: int = 3,
    halo: int = 16,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One sample: uint8 image (H, W, 3), uint8 mask (H, W) and its cue: ``kind``, ``distance`` (px, local only),
    ``direction`` ((dy, dx), local only), ``marker`` (the marker box's top-left corner, local only), and per object
    its box's top-left corner, class and colour (``objects``)."""
    size, s = image_size, object_size
    kind = cue_kinds[int(rng.integers(len(cue_kinds)))]
    grey = rng.uniform(70, 130)
    image = np.full((size, size, 3), grey)
    mask = np.zeros((size, size), dtype=np.uint8)
    disc = _disc(s)
    cue: dict[str, Any] = {"kind": kind, "distance": None, "direction": None, "marker": None}
    if kind == "local":
        cls = int(rng.integers(1, 4))
        distance = int(cue_distances[int(rng.integers(len(cue_distances)))])
        dy, dx = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        e = (marker_size - s) // 2  # the marker box is the object box grown by e on each side
        # top-left corners: the object's in [0, size - s], the marker's (object's - e + offset) in [0, size - m]
        lo = [max(0, e - d * distance) for d in (dy, dx)]
        hi = [min(size - s, size - marker_size + e - d * distance) for d in (dy, dx)]
        boxes = [(int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1)))]
        my, mx = boxes[0][0] - e + dy * distance, boxes[0][1] - e + dx * distance
        image[my : my + marker_size, mx : mx + marker_size] = MARKER_COLOURS[cls - 1]
        classes = [cls]
        cue.update(distance=distance, direction=(dy, dx), marker=(my, mx))
    else:
        cls, count = int(rng.integers(1, 4)), int(rng.integers(1, max_objects + 1))
        boxes = []
        for _ in range(100 * count):  # rejection sampling of boxes at least one object apart
            y, x = (int(v) for v in rng.integers(0, size - s + 1, 2))
            if all(max(abs(y - by), abs(x - bx)) >= 2 * s for by, bx in boxes):
                boxes.append((y, x))
            if len(boxes) == count:
                break
        level = np.where(_stripes(PATTERNS[cls - 1], size, size), CONTRAST, -CONTRAST)  # (H, W)
        ys, xs = np.arange(size)[:, None] + 0.5, np.arange(size)[None, :] + 0.5
        for y, x in boxes:  # the plain halo: no pattern within s / 2 + halo of an object's centre
            level[(ys - y - s / 2) ** 2 + (xs - x - s / 2) ** 2 <= (s / 2 + halo) ** 2] = 0.0
        image += level[..., None]
        classes = [cls] * len(boxes)
    colours = [int(rng.integers(len(OBJECT_COLOURS))) for _ in boxes]
    for (y, x), c, colour in zip(boxes, classes, colours, strict=True):
        image[y : y + s, x : x + s][disc] = OBJECT_COLOURS[colour]
        mask[y : y + s, x : x + s][disc] = c
    cue["objects"] = [{"box": box, "class": c, "colour": k} for box, c, k in zip(boxes, classes, colours, strict=True)]
    image += rng.normal(0.0, NOISE, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask, cue


class ContextShapesDataset(Dataset):
    """The context task (see the module docstring), generated lazily and deterministically from ``(seed, index)``.

    Args:
        num_samples: Dataset length.
        image_size: Side of the square images (at least 32).
        seed: Base seed of the generator.
        cue_kinds: The cue kinds drawn from per image (uniformly): ``local`` and/or ``global``.
        cue_distances: Distances (px) of the local cue's marker from the object's centre, drawn uniformly.
        object_size: Diameter (px) of the objects.
        marker_size: Side (px) of the local cue's square marker (>= ``object_size``).
        max_objects: Most objects in a global-cue image (1 … this many).
        halo: Width (px) of the plain ring around each object of a global-cue image.
        cache: Keep generated samples in memory (per process, so per DataLoader worker).
    """

    ignore_index: int = 255
    classes = CONTEXT_CLASSES
    num_classes = len(CONTEXT_CLASSES)

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int = 256,
        seed: int = 0,
        cue_kinds: Sequence[str] = CUE_KINDS,
        cue_distances: Sequence[int] = CUE_DISTANCES,
        object_size: int = 16,
        marker_size: int = 16,
        max_objects: int = 3,
        halo: int = 16,
        cache: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples!r}")
        if image_size < 32:
            raise ConfigError(f"image_size must be >= 32, got {image_size!r} (--data.init_args.image_size)")
        if max_objects < 1:
            raise ConfigError(f"max_objects must be >= 1, got {max_objects!r} (--data.init_args.max_objects)")
        if halo < 0:
            raise ConfigError(f"halo must be >= 0, got {halo!r} (--data.init_args.halo)")
        _check(tuple(cue_kinds), tuple(cue_distances), image_size, (object_size, marker_size))
        self.num_samples, self.seed = num_samples, seed
        self.generator = {
            "image_size": image_size,
            "cue_kinds": tuple(cue_kinds),
            "cue_distances": tuple(cue_distances),
            "object_size": object_size,
            "marker_size": marker_size,
            "max_objects": max_objects,
            "halo": halo,
        }
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, dict]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Image (H, W, 3) uint8, mask (H, W) uint8 and cue of sample ``index`` as numpy arrays and a dict."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index must be in [0, {self.num_samples}), got {index!r}")
        index = int(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        out = render_context(np.random.default_rng([self.seed, index]), **self.generator)
        if self._cache is not None:
            self._cache[index] = out
        return out

    def cue(self, index: int) -> dict[str, Any]:
        """What decides sample ``index``'s labels: kind, distance, direction, marker and objects."""
        return self.sample(index)[2]

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask, _ = self.sample(index)
        # copies keep in-place transforms from corrupting cached arrays
        image_t = torch.from_numpy(image.transpose(2, 0, 1).copy())  # (3, H, W)
        return tv_tensors.Image(image_t), tv_tensors.Mask(torch.from_numpy(mask.copy()))
