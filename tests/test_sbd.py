"""SBD in its release layout, agreement with torchvision's SBDataset, DeepLab's train_aug split, bad input."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
import torchvision
from PIL import Image

from deeplab_lit.data.sbd import SBDSegmentation, TrainAugSegmentation, read_sbd_mat, train_aug_ids
from deeplab_lit.data.voc import DataError, voc_palette

SIZE = (8, 10)  # (H, W)
VOC_SPLITS = {"train": ["2007_000032", "2007_000039", "2007_000063"], "val": ["2007_000033", "2007_000042"]}
# 2007_000039 is in VOC train and SBD train; 2007_000063 in VOC train and SBD val; 2007_000033 is VOC val but SBD train.
SBD_SPLITS = {
    "train": ["2007_000039", "2007_000033", "2008_000002", "2008_000003"],
    "val": ["2007_000063", "2008_000008"],
}
TRAIN_AUG = ["2007_000032", "2007_000039", "2007_000063", "2008_000002", "2008_000003", "2008_000008"]
VOC_ONLY_JPEG = "2008_000003"  # VOC has the image (no VOC annotation); SBD's copy differs so the choice is visible


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = SIZE) -> None:
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def write_mat(path: Path, seg: np.ndarray) -> None:
    """An SBD cls/<id>.mat: a 1x1 struct GTcls with Segmentation, Boundaries (20 sparse maps), CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(seg == k + 1)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8).reshape(-1, 1)
    gt = {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gt})


def sbd_labels(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    seg = rng.integers(0, 21, size).astype(np.uint8)
    seg[-1, :3] = 255
    return seg


def write_voc_mask(path: Path, labels: np.ndarray) -> None:
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([c for rgb in voc_palette() for c in rgb])
    mask.save(path)


@pytest.fixture
def sbd(tmp_path) -> Path:
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    for d in ("img", "cls", "inst"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, ids in SBD_SPLITS.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, name in enumerate(ids):
            size = (SIZE[0] + i, SIZE[1])
            write_jpeg(root / "img" / f"{name}.jpg", rng, size)
            write_mat(root / "cls" / f"{name}.mat", sbd_labels(rng, size))
    return tmp_path / "benchmark_RELEASE"


@pytest.fixture
def voc(tmp_path, sbd) -> Path:
    """A VOC tree whose images for SBD's ids are SBD's own (as in the real releases), except ``VOC_ONLY_JPEG``."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, ids in VOC_SPLITS.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name in ids:
            sbd_image = sbd / "dataset/img" / f"{name}.jpg"
            size = Image.open(sbd_image).size[::-1] if sbd_image.is_file() else SIZE
            write_jpeg(root / "JPEGImages" / f"{name}.jpg", rng, size)
            labels = rng.integers(0, 21, size).astype(np.uint8)
            labels[0, :] = 255  # VOC's boundary band
            write_voc_mask(root / "SegmentationClass" / f"{name}.png", labels)
    size = Image.open(sbd / "dataset/img" / f"{VOC_ONLY_JPEG}.jpg").size[::-1]
    write_jpeg(root / "JPEGImages" / f"{VOC_ONLY_JPEG}.jpg", rng, size)
    return tmp_path / "VOCdevkit"


def as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy() if tensor.ndim == 2 else tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("level", ["benchmark_RELEASE", "benchmark_RELEASE/dataset"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_agrees_with_torchvision_sbdataset(sbd, level, split) -> None:
    ours = SBDSegmentation(sbd.parent / level, split)
    ref = torchvision.datasets.SBDataset(str(sbd / "dataset"), image_set=split, mode="segmentation")
    assert len(ours) == len(ref) == len(SBD_SPLITS[split]) and ours.ids == SBD_SPLITS[split]
    assert ours.num_classes == 21
    for i in range(len(ours)):
        image, mask = ours[i]
        ref_image, ref_mask = ref[i]
        assert image.dtype == torch.uint8 and image.shape == (3, SIZE[0] + i, SIZE[1])
        assert mask.dtype == torch.uint8 and mask.shape == (SIZE[0] + i, SIZE[1])
        assert np.array_equal(as_array(image), np.asarray(ref_image))
        assert np.array_equal(as_array(mask), np.asarray(ref_mask).astype(np.int64))
        assert (mask[-1, :3] == 255).all() and mask.max() == 255


def test_read_sbd_mat_reads_the_gtcls_struct(tmp_path) -> None:
    seg = sbd_labels(np.random.default_rng(3))
    write_mat(tmp_path / "x.mat", seg)
    assert scipy.io.loadmat(tmp_path / "x.mat")["GTcls"][0]["Segmentation"][0].shape == SIZE
    labels = read_sbd_mat(tmp_path / "x.mat")
    assert labels.dtype == np.uint8 and np.array_equal(labels, seg)
    write_mat(tmp_path / "wide.mat", seg.astype(np.int32) * 0 + 7)  # any integer type, returned as uint8
    assert read_sbd_mat(tmp_path / "wide.mat").dtype == np.uint8 and (read_sbd_mat(tmp_path / "wide.mat") == 7).all()


def test_train_aug_arithmetic() -> None:
    ids = train_aug_ids(VOC_SPLITS["train"], VOC_SPLITS["val"], SBD_SPLITS["train"], SBD_SPLITS["val"])
    assert ids == TRAIN_AUG
    assert train_aug_ids(["b", "a", "a"], ["x"], ["x", "c", "b"], ["d", "x", "a"]) == ["a", "b", "c", "d"]
    assert train_aug_ids(["v"], ["v"], [], []) == []


def test_train_aug_from_releases_voc_annotation_wins(voc, sbd) -> None:
    ds = TrainAugSegmentation(voc, sbd)
    assert len(ds) == 6 and ds.ids == TRAIN_AUG and "2007_000033" not in ds.ids
    assert ds.describe() == "train_aug: 6 images (VOC train 3 + SBD 3)"
    voc_root, sbd_root = voc / "VOC2012", sbd / "dataset"
    for i, name in enumerate(ds.ids):
        image, mask = ds[i]
        if name in VOC_SPLITS["train"]:  # VOC's own annotation with its 255 boundary band, over SBD's
            expected = np.asarray(Image.open(voc_root / "SegmentationClass" / f"{name}.png")).astype(np.int64)
            assert (mask[0] == 255).all()
            if name in SBD_SPLITS["train"] + SBD_SPLITS["val"]:
                assert not np.array_equal(as_array(mask), read_sbd_mat(sbd_root / "cls" / f"{name}.mat"))
        else:
            expected = read_sbd_mat(sbd_root / "cls" / f"{name}.mat").astype(np.int64)
        assert np.array_equal(as_array(mask), expected)
        source = voc_root / "JPEGImages" if (voc_root / "JPEGImages" / f"{name}.jpg").is_file() else sbd_root / "img"
        assert np.array_equal(as_array(image), np.asarray(Image.open(source / f"{name}.jpg").convert("RGB")))
    voc_image = np.asarray(Image.open(voc_root / "JPEGImages" / f"{VOC_ONLY_JPEG}.jpg"))
    sbd_image = np.asarray(Image.open(sbd_root / "img" / f"{VOC_ONLY_JPEG}.jpg"))
    chosen = as_array(ds[ds.ids.index(VOC_ONLY_JPEG)][0])
    assert np.array_equal(chosen, voc_image) and not np.array_equal(chosen, sbd_image)
    assert TrainAugSegmentation(voc / "VOC2012", sbd / "dataset").ids == TRAIN_AUG


def write_aug(voc: Path, ids: list[str], list_path: str, deeplab_style: bool) -> dict[str, np.ndarray]:
    root = voc / "VOC2012"
    (root / "SegmentationClassAug").mkdir()
    rng = np.random.default_rng(4)
    labels = {}
    for name in ids:
        if not (root / "JPEGImages" / f"{name}.jpg").is_file():
            write_jpeg(root / "JPEGImages" / f"{name}.jpg", rng)
        size = Image.open(root / "JPEGImages" / f"{name}.jpg").size[::-1]
        labels[name] = sbd_labels(rng, size)
        Image.fromarray(labels[name], mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" if deeplab_style else i for i in ids]
    (root / list_path).write_text("\n".join(lines) + "\n")
    return labels


@pytest.mark.parametrize(
    ("list_path", "deeplab_style"),
    [
        ("ImageSets/Segmentation/train_aug.txt", True),
        ("ImageSets/Segmentation/train_aug.txt", False),
        ("train_aug.txt", True),
    ],
)
def test_pre_converted_segmentation_class_aug(voc, list_path, deeplab_style) -> None:
    labels = write_aug(voc, TRAIN_AUG, list_path, deeplab_style)
    ds = TrainAugSegmentation(voc)
    assert ds.ids == TRAIN_AUG and len(ds) == 6
    assert ds.describe() == "train_aug: 6 images (VOC train 3 + SBD 3)"
    for i, name in enumerate(ds.ids):
        image, mask = ds[i]
        assert mask.dtype == torch.uint8 and np.array_equal(as_array(mask), labels[name].astype(np.int64))
        jpeg = voc / "VOC2012/JPEGImages" / f"{name}.jpg"
        assert np.array_equal(as_array(image), np.asarray(Image.open(jpeg).convert("RGB")))


def test_train_aug_list_overlapping_voc_val_is_refused(voc) -> None:
    write_aug(voc, [*TRAIN_AUG, "2007_000042"], "ImageSets/Segmentation/train_aug.txt", True)
    with pytest.raises(DataError, match=r"train_aug.txt lists 1 VOC val images \(2007_000042\).*val.txt"):
        TrainAugSegmentation(voc)


def test_train_aug_without_aug_dir_or_sbd_names_the_layouts(voc) -> None:
    with pytest.raises(DataError, match=r"no pre-converted train_aug: missing SegmentationClassAug.*SBD root"):
        TrainAugSegmentation(voc)


FIRST = SBD_SPLITS["train"][0]


def break_missing_mat(root: Path) -> None:
    (root / "cls" / f"{SBD_SPLITS['train'][2]}.mat").unlink()


def break_corrupt_mat(root: Path) -> None:
    (root / "cls" / f"{FIRST}.mat").write_bytes(b"not a mat file at all, just garbage bytes" * 4)


def break_truncated_mat(root: Path) -> None:
    path = root / "cls" / f"{FIRST}.mat"
    path.write_bytes(path.read_bytes()[:200])


def break_no_gtcls(root: Path) -> None:
    scipy.io.savemat(root / "cls" / f"{FIRST}.mat", {"Segmentation": np.zeros(SIZE, np.uint8)})


def break_no_segmentation_field(root: Path) -> None:
    scipy.io.savemat(root / "cls" / f"{FIRST}.mat", {"GTcls": {"Boundaries": np.zeros(3)}})


def break_labels(root: Path) -> None:
    seg = np.zeros(SIZE, np.uint8)
    seg[2, 3] = 40
    write_mat(root / "cls" / f"{FIRST}.mat", seg)


def break_size(root: Path) -> None:
    write_mat(root / "cls" / f"{FIRST}.mat", np.zeros((4, 5), np.uint8))


def break_split(root: Path) -> None:
    (root / "train.txt").unlink()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (break_missing_mat, r"mask .*cls/2008_000002.mat listed in train.txt is missing"),
        (break_corrupt_mat, rf"mask .*cls/{FIRST}.mat is not a readable .mat file"),
        (break_truncated_mat, rf"mask .*cls/{FIRST}.mat is not a readable .mat file"),
        (break_no_gtcls, rf"mask .*cls/{FIRST}.mat has no GTcls.Segmentation field"),
        (break_no_segmentation_field, rf"mask .*cls/{FIRST}.mat has no GTcls.Segmentation field"),
        (break_labels, rf"mask .*cls/{FIRST}.mat has label values \[40\] outside \[0, 21\) and 255"),
        (break_size, rf"mask .*cls/{FIRST}.mat is 5x4 but image .*img/{FIRST}.jpg is 10x8"),
        (break_split, r"split file .*train.txt is missing"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_bad_input_names_the_file_and_the_problem(sbd, damage, match) -> None:
    damage(sbd / "dataset")
    with pytest.raises(DataError, match=match):
        SBDSegmentation(sbd, "train")


def test_missing_root_spells_out_the_layout(tmp_path) -> None:
    with pytest.raises(DataError, match=r"not an SBD root: missing img, cls; expected benchmark_RELEASE/dataset/\{img"):
        SBDSegmentation(tmp_path / "nowhere", "train")


def test_read_sbd_mat_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match=r"mask .*absent.mat is missing"):
        read_sbd_mat(tmp_path / "absent.mat")


def test_broken_sbd_mask_in_train_aug_is_named_when_read(voc, sbd) -> None:
    seg = np.zeros(Image.open(sbd / "dataset/img/2008_000002.jpg").size[::-1], np.uint8)
    seg[0, 0] = 40
    write_mat(sbd / "dataset/cls/2008_000002.mat", seg)
    ds = TrainAugSegmentation(voc, sbd)  # construction decodes only the first pair
    with pytest.raises(DataError, match=r"cls/2008_000002.mat has label values \[40\]"):
        ds[ds.ids.index("2008_000002")]
