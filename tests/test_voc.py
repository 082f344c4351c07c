"""VOC 2012 in its exact on-disk layout: reading, agreement with torchvision, bad input, the VOC recipes."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import recipe_args
from deeplab_lit.cli import main
from deeplab_lit.data import DataError, VOCDataModule, VOCSegmentation
from deeplab_lit.data.voc import voc_palette

SPLITS = {"train": ["2007_000032", "2007_000039", "2007_000063"], "val": ["2007_000033", "2007_000042"]}


def write_pair(root: Path, name: str, size: tuple[int, int], rng: np.random.Generator, max_label: int = 20) -> None:
    h, w = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    labels = rng.integers(0, max_label + 1, (h, w)).astype(np.uint8)
    labels[0, :] = 255  # boundary band
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([c for rgb in voc_palette() for c in rgb])
    mask.save(root / "SegmentationClass" / f"{name}.png")


def write_voc(parent: Path) -> Path:
    """A VOC 2012 devkit under ``parent``: ``SPLITS``' images and palette masks, 40-42 x 48 px; returns its root."""
    root = parent / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, ids in SPLITS.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, name in enumerate(ids):
            write_pair(root, name, (40 + i, 48), rng)
    return parent / "VOCdevkit"


@pytest.fixture
def voc(tmp_path) -> Path:
    return write_voc(tmp_path)


def test_reads_images_and_palette_labels(voc) -> None:
    ds = VOCSegmentation(voc, "train")
    assert len(ds) == 3
    image, mask = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 41, 48)
    assert mask.dtype == torch.uint8 and mask.shape == (41, 48)
    expected = np.asarray(Image.open(voc / "VOC2012/SegmentationClass/2007_000039.png"))
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.uint8)))
    assert (mask[0] == 255).all() and mask[1:].max() <= 20


def test_agrees_with_torchvision_voc_reader(voc) -> None:
    ours = VOCSegmentation(voc, "val")
    ref = torchvision.datasets.VOCSegmentation(str(voc.parent), year="2012", image_set="val")
    for i in range(len(ours)):
        image, mask = ours[i]
        ref_image, ref_mask = ref[i]
        assert torch.equal(image, torch.from_numpy(np.asarray(ref_image)).permute(2, 0, 1))
        assert torch.equal(mask, torch.from_numpy(np.asarray(ref_mask).astype(np.uint8)))


def test_rgb_masks_in_the_palette_are_converted_others_rejected(voc) -> None:
    root = voc / "VOC2012"
    mask_path = root / "SegmentationClass/2007_000032.png"
    labels = np.asarray(Image.open(mask_path))
    rgb = np.array(voc_palette(), dtype=np.uint8)[labels]
    Image.fromarray(rgb).save(mask_path)
    assert torch.equal(VOCSegmentation(voc, "train")[0][1], torch.from_numpy(labels.astype(np.uint8)))
    rgb[5, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(mask_path)
    with pytest.raises(DataError, match=r"2007_000032.png is an RGB image with colours \[\(1, 2, 3\)\]"):
        VOCSegmentation(voc, "train")


def break_missing_mask(root: Path) -> None:
    (root / "SegmentationClass/2007_000039.png").unlink()


def break_corrupt_image(root: Path) -> None:
    (root / "JPEGImages/2007_000032.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def break_size(root: Path) -> None:
    Image.new("P", (10, 10)).save(root / "SegmentationClass/2007_000032.png")


def break_labels(root: Path) -> None:
    labels = np.zeros((40, 48), np.uint8)
    labels[3, 3] = 42
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([c for rgb in voc_palette() for c in rgb])  # a full palette keeps PIL from remapping indices
    mask.save(root / "SegmentationClass/2007_000032.png")


def break_split(root: Path) -> None:
    (root / "ImageSets/Segmentation/train.txt").write_text("\n\n")


def break_layout(root: Path) -> None:
    (root / "SegmentationClass").rename(root / "Masks")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (break_missing_mask, r"mask .*2007_000039.png listed in train.txt is missing"),
        (break_corrupt_image, r"image .*2007_000032.jpg is corrupt or truncated"),
        (break_size, r"mask .*2007_000032.png is 10x10 but image .*2007_000032.jpg is 48x40"),
        (break_labels, r"mask .*2007_000032.png has label values \[42\] outside \[0, 21\)"),
        (break_split, r"split file .*train.txt is empty"),
        (break_layout, r"is not a VOC 2012 root: missing SegmentationClass"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_bad_input_names_the_file_and_the_problem(voc, damage, match) -> None:
    damage(voc / "VOC2012")
    with pytest.raises(DataError, match=match):
        VOCSegmentation(voc, "train")[0]  # construction checks; the first pair decodes


def test_wrong_root_is_caught_at_setup_before_training(tmp_path) -> None:
    with pytest.raises(DataError, match=r"has no pre-converted train_aug: missing JPEGImages"):
        VOCDataModule(root=str(tmp_path)).setup("fit")
    with pytest.raises(DataError, match="not a VOC 2012 root"):
        VOCDataModule(root=str(tmp_path), train_split="train").setup("fit")


def write_train_aug(voc: Path, ids: list[str]) -> None:
    """The pre-converted train_aug layout: grayscale ``SegmentationClassAug`` PNGs and a DeepLab-style list."""
    root = voc / "VOC2012"
    (root / "SegmentationClassAug").mkdir()
    for name in ids:
        labels = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
        Image.fromarray(labels, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(lines) + "\n")


def test_train_aug_is_the_default_training_split_and_refuses_val_images(voc, caplog) -> None:
    write_train_aug(voc, SPLITS["train"])
    dm = VOCDataModule(root=str(voc), num_workers=0)
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert len(dm.dataset("train")) == 3 and "train_aug: 3 images" in caplog.text
    listing = voc / "VOC2012/ImageSets/Segmentation/train_aug.txt"
    listing.write_text(listing.read_text() + "/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n")
    with pytest.raises(DataError, match=r"train_aug.txt lists 1 VOC val images \(2007_000033\)"):
        VOCDataModule(root=str(voc)).setup("fit")


@pytest.mark.parametrize("config", sorted(Path("experiments/configs/voc").glob("*.yaml")), ids=lambda p: p.stem)
def test_voc_recipes_run_on_a_tiny_tree(voc, tmp_path, config) -> None:
    write_train_aug(voc, SPLITS["train"])
    cli = main(["fit", *recipe_args(config, voc, tmp_path), "--trainer.fast_dev_run", "1"])
    assert cli.trainer.global_step == 1 and cli.model.hparams.num_classes == 21


def test_check_data_scans_every_sample_and_names_every_bad_file(voc, tmp_path, capsys) -> None:
    config = tmp_path / "voc.yaml"
    config.write_text(
        "model: {class_path: deeplab_lit.systems.DeepLabV3}\n"
        f"data: {{class_path: deeplab_lit.data.VOCDataModule, init_args: {{root: {voc}, train_split: train}}}}\n"
    )
    args = ["check-data", "--config", str(config), "--data.init_args.num_workers", "0"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0 and "data check passed" in capsys.readouterr().out

    root = voc / "VOC2012"
    (root / "JPEGImages/2007_000063.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # the last train image
    labels = np.asarray(Image.open(root / "SegmentationClass/2007_000042.png")).copy()
    labels[5, 5] = 30
    Image.fromarray(labels, mode="L").save(root / "SegmentationClass/2007_000042.png")  # the last val mask
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and "data check failed: 2 problems" in out
    assert re.search(r"image .*2007_000063.jpg is corrupt", out)
    assert re.search(r"mask .*2007_000042.png has label values \[30\]", out)
    assert "train: 3 samples, 1 bad" in out and "val: 2 samples, 1 bad" in out
