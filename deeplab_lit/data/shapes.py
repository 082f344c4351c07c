"""Shapes: a procedurally generated semantic segmentation dataset that needs no download.

Classes are defined by geometry only: every object gets a random colour/texture drawn from the
same distribution as the cluttered background, object sizes span more than an order of magnitude,
and thin parts (star tips, cross arms, rings) give a decoder and a CRF something to fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import ConfigError

SHAPES_CLASSES: tuple[str, ...] = ("background", "circle", "rectangle", "triangle", "star", "cross", "ring")
SHAPES_PALETTE: list[tuple[int, int, int]] = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
]
IGNORE_INDEX = 255
PLACEMENT_TRIES = 10
MIN_SHOWN = 0.6  # share of its area every object keeps visible when a placement among the tries allows it
MIN_CONTRAST = 80.0  # RGB distance between an object's colours and what it covers: every outline is visible


def check_shapes(shapes: Sequence[str] | None) -> tuple[str, ...]:
    """``shapes`` as a tuple (all six when None), refusing unknown, repeated or no names."""
    if shapes is None:
        return SHAPES_CLASSES[1:]
    shapes = tuple(shapes)
    unknown = [name for name in shapes if name not in SHAPES_CLASSES[1:]]
    if unknown or not shapes or len(set(shapes)) != len(shapes):
        raise ConfigError(f"shapes must be distinct names from {SHAPES_CLASSES[1:]}, got {list(shapes)!r}")
    return shapes


def shapes_palette(shapes: Sequence[str]) -> list[tuple[int, int, int]]:
    """Colours of background + ``shapes``: each shape keeps its colour whatever subset is chosen."""
    return [SHAPES_PALETTE[SHAPES_CLASSES.index(name)] for name in ("background", *shapes)]


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of shape `name` with size `s` in rotated, centred coordinates (u, v)."""
    if name == "circle":
        return u * u + v * v <= s * s
    if name == "rectangle":
        return (np.abs(u) <= s) & (np.abs(v) <= s * rng.uniform(0.4, 1.0))
    if name == "triangle":
        # Equilateral with circumradius s: its three edges lie at distance s / 2 from the centre.
        angles = (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
        return np.all([u * math.cos(a) + v * math.sin(a) <= s / 2 for a in angles], axis=0)
    if name == "star":
        # Fold the angle into one half-spike wedge; there the star is bounded by the single edge
        # from the outer tip A = (s, 0) to the inner vertex B, so one half-plane test suffices.
        half = math.pi / 5
        inner = s * rng.uniform(0.3, 0.45)
        phi = np.mod(np.arctan2(v, u), 2 * half)
        phi = np.minimum(phi, 2 * half - phi)
        rho = np.hypot(u, v)
        bx, by = inner * math.cos(half), inner * math.sin(half)
        return (bx - s) * rho * np.sin(phi) - by * (rho * np.cos(phi) - s) >= 0
    if name == "cross":
        # At least a 2-3 px wide arm so tiny crosses do not vanish between pixel centres.
        w = max(1.0, s * rng.uniform(0.1, 0.25))
        au, av = np.abs(u), np.abs(v)
        return ((au <= s) & (av <= w)) | ((av <= s) & (au <= w))
    if name == "ring":
        r2 = u * u + v * v
        thickness = max(1.5, s * rng.uniform(0.12, 0.35))
        return (r2 <= s * s) & (r2 > max(s - thickness, 0.0) ** 2)
    raise ValueError(f"unknown shape {name!r}")


def _colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """A random RGB colour at least ``MIN_CONTRAST`` (Euclidean) from ``beneath``; best of 16 draws otherwise."""
    draws = rng.uniform(0, 255, size=(16, 3))
    distance = np.linalg.norm(draws - beneath, axis=1)
    ok = np.flatnonzero(distance >= MIN_CONTRAST)
    return draws[ok[0] if ok.size else distance.argmax()]


def _texture(
    rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, beneath: np.ndarray, textured: float
) -> np.ndarray:
    """Random fill of two colours that both stand out from ``beneath`` (the mean colour the object covers):
    solid, or with probability ``textured`` stripes, a gradient or speckle."""
    a, b = _colour(rng, beneath), _colour(rng, beneath)
    shape = np.broadcast_shapes(dy.shape, dx.shape)
    if rng.random() >= textured:
        return np.broadcast_to(a, (*shape, 3))
    kind = rng.integers(3)
    angle = rng.uniform(0, math.pi)
    proj = dx * math.cos(angle) + dy * math.sin(angle)
    if kind == 0:
        t = np.floor(proj / rng.uniform(2.0, 8.0)) % 2
    elif kind == 1:
        t = np.clip(proj / rng.uniform(8.0, 60.0) + 0.5, 0.0, 1.0)
    else:
        t = rng.random(shape)
    return a + t[..., None] * (b - a)


def _background(rng: np.random.Generator, height: int, width: int, clutter: int) -> np.ndarray:
    """Smooth colour field (bilinearly upsampled random grid) with grain, crossed by up to ``clutter`` thin lines.

    The field varies around one random colour by ±50 per channel and carries per-pixel grain, a texture
    objects do not have: foreground is separable from background locally, the class only by shape.
    """
    gh, gw = rng.integers(2, 6, size=2)
    grid = np.clip(rng.uniform(30, 225, size=3) + rng.uniform(-50, 50, size=(gh, gw, 3)), 0, 255)
    fy, fx = np.linspace(0, gh - 1, height), np.linspace(0, gw - 1, width)
    y0, x0 = np.minimum(fy.astype(int), gh - 2), np.minimum(fx.astype(int), gw - 2)
    ty, tx = (fy - y0)[:, None, None], (fx - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    image = top * (1 - ty) + bottom * ty + rng.normal(0.0, rng.uniform(12.0, 24.0), size=(height, width, 3))

    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    for _ in range(rng.integers(0, clutter + 1)):
        (py, qy), (px, qx) = rng.uniform(0, height, 2), rng.uniform(0, width, 2)
        dy, dx = qy - py, qx - px
        t = np.clip(((ys - py) * dy + (xs - px) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
        dist2 = (ys - py - t * dy) ** 2 + (xs - px - t * dx) ** 2
        image[dist2 <= rng.uniform(0.5, 1.5) ** 2] = rng.uniform(0, 255, 3)
    return image


def _ignore_band(mask: np.ndarray, band: int) -> np.ndarray:
    """Label IGNORE_INDEX every pixel whose (2*band+1)^2 neighbourhood holds more than one label."""
    k = 2 * band + 1
    padded = np.pad(mask, band, mode="edge")
    rows = sliding_window_view(padded, k, axis=0)
    hi = sliding_window_view(rows.max(axis=-1), k, axis=1).max(axis=-1)
    lo = sliding_window_view(rows.min(axis=-1), k, axis=1).min(axis=-1)
    out = mask.copy()
    out[hi != lo] = IGNORE_INDEX
    return out


def _place(
    rng: np.random.Generator, name: str, s: float, ys: np.ndarray, xs: np.ndarray
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """Random centre and rotation for shape ``name`` of size ``s``: its bounding box, the boolean shape in that
    box, and the box's pixel offsets from the centre (dy, dx)."""
    height, width = ys.shape[0], xs.shape[1]
    # Centres keep the whole object in frame (rectangles and crosses reach s * sqrt(2) from the centre): a shape
    # whose corners or tips fall outside the image cannot be told from another by its outline.
    reach = s * (math.sqrt(2) if name in ("rectangle", "cross") else 1.0)
    my, mx = min(reach, (height - 1) / 2), min(reach, (width - 1) / 2)  # pixel centres run 0 .. size - 1
    cy, cx, theta = rng.uniform(my, height - 1 - my), rng.uniform(mx, width - 1 - mx), rng.uniform(0, 2 * math.pi)
    r = s * 1.5 + 1  # every shape fits in a circle of radius s * sqrt(2), so only that box is evaluated
    box = (
        slice(max(0, int(cy - r)), min(height, int(cy + r) + 1)),
        slice(max(0, int(cx - r)), min(width, int(cx + r) + 1)),
    )
    dy, dx = ys[box[0]] - cy, xs[:, box[1]] - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = dy * math.cos(theta) - dx * math.sin(theta)
    return box, _shape_mask(name, u, v, s, rng), dy, dx


def render_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    min_objects: int = 1,
    max_objects: int = 4,
    scale_range: tuple[float, float] = (0.05, 0.5),
    classes: Sequence[str] = SHAPES_CLASSES[1:],
    textured: float = 0.75,
    clutter: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample as numpy arrays: uint8 image (H, W, 3) and uint8 mask (H, W), where label ``k`` is
    ``classes[k - 1]`` and 0 is background."""
    image = _background(rng, height, width, clutter)
    mask = np.zeros((height, width), dtype=np.uint8)
    owner = np.zeros((height, width), dtype=np.int64)  # which object (1, 2, ...) each pixel shows
    ys, xs = np.arange(height, dtype=np.float64)[:, None], np.arange(width, dtype=np.float64)[None, :]
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    count = int(rng.integers(min_objects, max_objects + 1))
    # Painted largest first, and each placed where it leaves every earlier object most of its area (the best of
    # PLACEMENT_TRIES draws): small objects may hide parts of large ones, but no outline disappears.
    sizes = np.sort(np.exp(rng.uniform(log_lo, log_hi, size=count)))[::-1] * min(height, width)
    areas = np.zeros(1)  # painted pixels per object, index 0 unused
    for s in map(float, sizes):
        k = len(areas)  # this object's id
        cls = int(rng.integers(len(classes)))
        best, best_kept = None, -1.0
        visible = np.bincount(owner.ravel(), minlength=k)[1:]  # pixels each earlier object shows now
        for _ in range(PLACEMENT_TRIES):
            box, inside, dy, dx = _place(rng, classes[cls], s, ys, xs)
            shown = visible - np.bincount(owner[box][inside], minlength=k)[1:]
            kept = float((shown / areas[1:]).min()) if k > 1 else 1.0
            if kept > best_kept:
                best, best_kept = (box, inside, dy, dx), kept
            if kept >= MIN_SHOWN:
                break
        box, inside, dy, dx = best
        if not inside.any():
            continue
        region = image[box]
        # Painting image and mask with the same boolean region keeps them pixel-exact; later objects overwrite
        # both, so the top-most object owns occluded pixels.
        region[inside] = _texture(rng, dy, dx, region[inside].mean(axis=0), textured)[inside]
        mask[box][inside] = cls + 1
        owner[box][inside] = k
        areas = np.append(areas, float(inside.sum()))
    image += rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ShapesDataset(Dataset):
    """Synthetic "Shapes" segmentation dataset, generated lazily and deterministically.

    Classes (``SHAPES_CLASSES``): background, circle, rectangle (rotated, aspect 0.4-1), triangle
    (equilateral), star (5 thin spikes), cross (thin arms) and ring (thin annulus). Each image has a
    smooth random-colour background with thin clutter lines and ``min_objects``-``max_objects``
    objects, each whole inside the frame, painted largest first (small ones occlude large ones). An
    object's size (radius or half-size) is ``min(H, W)`` times a log-uniform draw from
    ``scale_range``; its centre, rotation and colour/texture (solid, stripes, gradient or speckle of
    two random colours, both at least ``MIN_CONTRAST`` from what the object covers) are uniform and
    class-independent, so only shape identifies the class. Sample ``i`` depends only on
    ``(seed, i)``; use distinct seeds for train, validation and held-out prediction images.

    Args:
        num_samples: Dataset length.
        image_size: ``S`` or ``(H, W)``, each at least 16.
        seed: Base seed of the generator.
        min_objects: Minimum number of objects per image.
        max_objects: Maximum number of objects per image.
        scale_range: ``(lo, hi)`` object size as a fraction of the shorter side, ``0 < lo < hi <= 1``.
        ignore_band: If > 0, pixels within this many pixels (Chebyshev) of a label boundary get 255.
        shapes: The object classes, a subset of ``SHAPES_CLASSES[1:]`` in label order (default: all six).
        textured: Probability that an object is striped, graded or speckled rather than solid.
        clutter: Maximum number of thin clutter lines across the background.
        cache: Keep generated samples in memory (per process, so per DataLoader worker).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        scale_range: tuple[float, float] = (0.05, 0.5),
        ignore_band: int = 0,
        shapes: Sequence[str] | None = None,
        textured: float = 0.75,
        clutter: int = 5,
        cache: bool = False,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 16:
            raise ConfigError(f"image_size must be an int or (H, W) with each side >= 16, got {image_size!r}")
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples!r}")
        if min_objects < 0:
            raise ConfigError(f"min_objects must be >= 0, got {min_objects!r}")
        if max_objects < min_objects:
            raise ConfigError(f"max_objects must be >= min_objects ({min_objects}), got {max_objects!r}")
        lo, hi = scale_range
        if not 0 < lo < hi <= 1:
            raise ConfigError(f"scale_range must satisfy 0 < lo < hi <= 1, got {scale_range!r}")
        if ignore_band < 0:
            raise ConfigError(f"ignore_band must be >= 0, got {ignore_band!r}")
        self.shapes = check_shapes(shapes)
        if not 0 <= textured <= 1:
            raise ConfigError(f"textured must be a probability in [0, 1], got {textured!r}")
        if clutter < 0:
            raise ConfigError(f"clutter must be >= 0, got {clutter!r}")
        self.classes = ("background", *self.shapes)
        self.num_classes = len(self.classes)
        self.textured, self.clutter = float(textured), int(clutter)
        self.num_samples = num_samples
        self.height, self.width = int(size[0]), int(size[1])
        self.seed = seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.scale_range = (float(lo), float(hi))
        self.ignore_band = ignore_band
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        image, mask = render_shapes(
            rng,
            self.height,
            self.width,
            self.min_objects,
            self.max_objects,
            self.scale_range,
            self.shapes,
            self.textured,
            self.clutter,
        )
        if self.ignore_band:
            mask = _ignore_band(mask, self.ignore_band)
        return image, mask

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index must be in [0, {self.num_samples}), got {index!r}")
        index = int(index)
        if self._cache is None:
            image, mask = self._generate(index)
        else:
            if index not in self._cache:
                self._cache[index] = self._generate(index)
            image, mask = self._cache[index]
        # Copies keep in-place transforms from corrupting cached arrays.
        image_t = torch.from_numpy(image.transpose(2, 0, 1).copy())
        mask_t = torch.from_numpy(mask.copy())
        return tv_tensors.Image(image_t), tv_tensors.Mask(mask_t)


def write_shapes_images(folder: str | Path, num_images: int, seed: int = 1_000_000, **generator: Any) -> list[Path]:
    """Write Shapes images as ``shapes_00000.png``, ... into ``folder`` (created if missing).

    Pass a seed not used for training (the default is far from the usual small training seeds) so
    the images are held out; ``generator`` takes ``ShapesDataset``'s arguments (image size, shapes, ...).
    Returns the written paths in index order.
    """
    dataset = ShapesDataset(num_samples=num_images, seed=seed, **generator)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_images):
        image, _ = dataset[i]
        path = folder / f"shapes_{i:05d}.png"
        PILImage.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths
