"""Tests for the synthetic Shapes dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image as PILImage
from torchvision import tv_tensors

from deeplab_lit.data import ShapesDataModule
from deeplab_lit.data.shapes import SHAPES_CLASSES, SHAPES_PALETTE, ShapesDataset, write_shapes_images


def _masks(ds: ShapesDataset) -> np.ndarray:
    return np.stack([ds[i][1].numpy() for i in range(len(ds))])


def test_class_metadata() -> None:
    assert SHAPES_CLASSES[0] == "background"
    assert 6 <= len(SHAPES_CLASSES) <= 7
    assert len(SHAPES_PALETTE) == len(SHAPES_CLASSES) == len(set(SHAPES_PALETTE))
    ds = ShapesDataset(num_samples=3)
    assert ds.classes == SHAPES_CLASSES
    assert ds.num_classes == len(SHAPES_CLASSES)
    assert len(ds) == 3


def test_same_seed_and_index_is_deterministic_and_order_independent() -> None:
    forward = ShapesDataset(num_samples=8, image_size=64, seed=3)
    image0, mask0 = forward[0]
    image5, mask5 = forward[5]
    backward = ShapesDataset(num_samples=8, image_size=64, seed=3, cache=True)
    image5b, mask5b = backward[5]
    image0b, mask0b = backward[0]
    assert torch.equal(image0, image0b) and torch.equal(mask0, mask0b)
    assert torch.equal(image5, image5b) and torch.equal(mask5, mask5b)
    assert not torch.equal(image0, image5)


def test_different_seed_gives_different_samples() -> None:
    a = ShapesDataset(num_samples=2, image_size=64, seed=0)[1]
    b = ShapesDataset(num_samples=2, image_size=64, seed=1)[1]
    assert not torch.equal(a[0], b[0])
    assert not torch.equal(a[1], b[1])


def test_cache_returns_independent_copies() -> None:
    ds = ShapesDataset(num_samples=2, image_size=32, cache=True)
    image, mask = ds[0]
    image.zero_()
    mask.fill_(3)
    image2, mask2 = ds[0]
    assert image2.any() and not (mask2 == 3).all()


@pytest.mark.parametrize(("size", "hw"), [(48, (48, 48)), ((40, 72), (40, 72))])
def test_types_dtypes_and_shapes(size: int | tuple[int, int], hw: tuple[int, int]) -> None:
    image, mask = ShapesDataset(num_samples=1, image_size=size)[0]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, *hw)
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == hw


def test_labels_in_range_and_every_class_appears() -> None:
    masks = _masks(ShapesDataset(num_samples=50, image_size=64, seed=7))
    assert masks.min() >= 0 and masks.max() < len(SHAPES_CLASSES)
    assert set(np.unique(masks)) == set(range(len(SHAPES_CLASSES)))
    assert np.mean([(m == 0).any() for m in masks]) > 0.9
    assert (masks > 0).any(axis=(1, 2)).all()


def test_object_count_follows_arguments() -> None:
    empty = _masks(ShapesDataset(num_samples=5, image_size=32, min_objects=0, max_objects=0))
    assert (empty == 0).all()


def test_object_extents_span_at_least_ten_times() -> None:
    # One object per image, so the non-background bounding box is that object's extent.
    masks = _masks(ShapesDataset(num_samples=200, image_size=96, seed=11, min_objects=1, max_objects=1))
    extents = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if ys.size:
            extents.append(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    assert len(extents) > 150
    assert max(extents) / min(extents) >= 10
    # A fixed scale must not pass the same check.
    fixed = _masks(ShapesDataset(num_samples=50, image_size=96, scale_range=(0.2, 0.21), max_objects=1, min_objects=1))
    boxes = [max(np.ptp(np.nonzero(m)[0]), np.ptp(np.nonzero(m)[1])) + 1 for m in fixed]
    assert max(boxes) / min(boxes) < 10


def test_colour_does_not_reveal_class() -> None:
    # Colour-histogram classifier over object pixels: fit on one split, score on another.
    def quantised(ds: ShapesDataset) -> tuple[np.ndarray, np.ndarray]:
        samples = [ds[i] for i in range(len(ds))]
        images = np.stack([img.permute(1, 2, 0).numpy() for img, _ in samples]).reshape(-1, 3) // 32
        labels = np.stack([m.numpy() for _, m in samples]).reshape(-1)
        keep = labels > 0
        return (images[:, 0] * 64 + images[:, 1] * 8 + images[:, 2])[keep], labels[keep]

    train_bins, train_labels = quantised(ShapesDataset(num_samples=60, image_size=64, seed=21))
    test_bins, test_labels = quantised(ShapesDataset(num_samples=60, image_size=64, seed=22))
    counts = np.zeros((512, len(SHAPES_CLASSES)))
    np.add.at(counts, (train_bins, train_labels), 1)
    accuracy = (counts[test_bins].argmax(axis=1) == test_labels).mean()
    majority = np.bincount(test_labels).max() / test_labels.size
    assert accuracy < max(0.45, majority + 0.15)


def test_a_subset_of_shapes_sets_the_classes_and_keeps_their_colours() -> None:
    ds = ShapesDataset(num_samples=30, image_size=48, seed=2, shapes=["ring", "circle"])
    assert ds.classes == ("background", "ring", "circle") and ds.num_classes == 3
    assert set(np.unique(_masks(ds))) == {0, 1, 2}
    dm = ShapesDataModule(shapes=["ring", "circle"])
    assert dm.num_classes == 3 and dm.class_names == ds.classes
    assert dm.palette == [SHAPES_PALETTE[0], SHAPES_PALETTE[SHAPES_CLASSES.index("ring")], SHAPES_PALETTE[1]]
    # A ring has a hole (background inside its bounding box); a lone disk has none.
    for shape, holes in (("ring", True), ("circle", False)):
        masks = _masks(ShapesDataset(num_samples=10, image_size=64, seed=4, max_objects=1, shapes=[shape]))
        centres = [m[tuple(np.mean(np.nonzero(m), axis=1).round().astype(int))] for m in masks if m.any()]
        assert all((c == 0) == holes for c in centres)


def test_objects_lie_whole_inside_the_frame() -> None:
    # Rectangles and crosses reach s * sqrt(2) from their centre: 0.34 * sqrt(2) < 0.5, so no object may touch
    # the border, whatever its rotation.
    masks = _masks(ShapesDataset(num_samples=100, image_size=64, seed=9, scale_range=(0.2, 0.34), max_objects=1))
    border = np.concatenate([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], axis=1)
    assert (masks > 0).any(axis=(1, 2)).all() and not border.any()


def test_every_object_stands_out_from_what_it_covers() -> None:
    ds = ShapesDataset(num_samples=60, image_size=64, seed=8, max_objects=1, textured=0.0, clutter=0)
    for image, mask in (ds[i] for i in range(len(ds))):
        image, inside = image.permute(1, 2, 0).numpy().astype(float), mask.numpy() > 0
        ys, xs = np.nonzero(inside)
        box = np.zeros_like(inside)
        box[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
        around = box & ~inside
        if around.sum() >= 20:  # an object filling its whole frame leaves nothing to compare with
            assert np.linalg.norm(image[inside].mean(0) - image[around].mean(0)) > 40


def test_ignore_band_marks_exactly_the_pixels_near_boundaries() -> None:
    plain = _masks(ShapesDataset(num_samples=10, image_size=64, seed=5))
    banded = _masks(ShapesDataset(num_samples=10, image_size=64, seed=5, ignore_band=2))
    assert not (plain == 255).any()
    assert (banded == 255).any()
    padded = np.pad(plain, ((0, 0), (2, 2), (2, 2)), mode="edge")
    windows = sliding_window_view(padded, (5, 5), axis=(1, 2))
    mixed = windows.max(axis=(-2, -1)) != windows.min(axis=(-2, -1))
    np.testing.assert_array_equal(banded == 255, mixed)
    np.testing.assert_array_equal(banded[~mixed], plain[~mixed])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": (64, 15)}, "image_size"),
        ({"min_objects": 4, "max_objects": 3}, "max_objects"),
        ({"min_objects": -1}, "min_objects"),
        ({"scale_range": (0.5, 0.1)}, "scale_range"),
        ({"scale_range": (0.0, 0.4)}, "scale_range"),
        ({"scale_range": (0.1, 1.5)}, "scale_range"),
        ({"ignore_band": -1}, "ignore_band"),
        ({"shapes": ["circle", "hexagon"]}, "shapes"),
        ({"shapes": ["ring", "ring"]}, "shapes"),
        ({"shapes": []}, "shapes"),
        ({"textured": 1.5}, "textured"),
        ({"clutter": -1}, "clutter"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name) as info:
        ShapesDataset(**kwargs)
    assert repr(kwargs[name]) in str(info.value)


@pytest.mark.parametrize("index", [3, -1])
def test_index_out_of_range(index: int) -> None:
    with pytest.raises(IndexError, match=str(index)):
        ShapesDataset(num_samples=3)[index]


def test_write_shapes_images(tmp_path) -> None:
    paths = write_shapes_images(tmp_path / "held_out", num_images=3, image_size=(40, 56), seed=99)
    assert [p.name for p in paths] == ["shapes_00000.png", "shapes_00001.png", "shapes_00002.png"]
    reference = ShapesDataset(num_samples=3, image_size=(40, 56), seed=99)
    for i, path in enumerate(paths):
        with PILImage.open(path) as png:
            assert png.format == "PNG" and png.mode == "RGB" and png.size == (56, 40)
            pixels = np.asarray(png)
        np.testing.assert_array_equal(pixels, reference[i][0].permute(1, 2, 0).numpy())


def test_augmentation_is_reproducible_per_worker_from_the_seed() -> None:
    """Two loader workers: the same seed gives the same augmented batches, another seed other ones."""
    import lightning as L

    def first_batches(seed: int) -> list[torch.Tensor]:
        L.seed_everything(seed, workers=True)
        dm = ShapesDataModule(num_train=8, image_size=32, batch_size=2, num_workers=2, scale_range=(0.5, 2.0))
        loader = dm.train_dataloader()
        return [x for (x, _), _ in zip(loader, range(3), strict=False)]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_a_seeded_sample_is_its_transform_after_torch_manual_seed_and_leaves_the_global_generator() -> None:
    """``Transformed[(index, seed)]`` seeds only the CPU generator: the sample ``torch.manual_seed(seed)`` gives."""
    from deeplab_lit.data.datamodule import Transformed

    dm = ShapesDataModule(num_train=4, image_size=32, batch_size=2, num_workers=0, scale_range=(0.5, 2.0))
    data = Transformed(dm.dataset("train"), dm.train_transform())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    x, y = data[(1, 7)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    ref_x, ref_y = dm.train_transform()(*dm.dataset("train")[1])
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    assert not torch.equal(x, data[(1, 8)][0])
