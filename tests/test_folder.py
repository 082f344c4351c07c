"""Custom folders: images/ + masks/ by stem, a class list, clear errors for unpaired or bad files."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_lit.cli import main
from deeplab_lit.data import DataError, FolderDataModule
from deeplab_lit.data.folder import FolderSegmentation


def write_folder(root: Path) -> Path:
    """A 3-class tree: train f0..f3, val f0..f1, 36x44 JPEG images and grayscale masks (top rows 255)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(
                root / split / "images" / f"f{i}.jpg"
            )
            labels = rng.integers(0, 3, (36, 44)).astype(np.uint8)
            labels[:2] = 255
            Image.fromarray(labels, mode="L").save(root / split / "masks" / f"f{i}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path)


def test_reads_pairs_by_stem(folder) -> None:
    ds = FolderSegmentation(folder, "train", num_classes=3)
    assert len(ds) == 4 and ds.stems == ["f0", "f1", "f2", "f3"]
    image, mask = ds[2]
    assert image.shape == (3, 36, 44)
    assert (mask.numpy() == np.asarray(Image.open(folder / "train/masks/f2.png"))).all()


def test_a_custom_ignore_label_is_read_as_255(folder) -> None:
    path = folder / "train/masks/f1.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[labels == 255] = 9  # this dataset marks "don't care" with 9
    Image.fromarray(labels, mode="L").save(path)
    with pytest.raises(DataError, match=r"f1.png has label values \[9\]"):
        FolderSegmentation(folder, "train", num_classes=3)[1]
    mask = FolderDataModule(str(folder), ["a", "b", "c"], ignore_label=9).dataset("train")[1][1].numpy()
    assert (mask[:2] == 255).all() and set(np.unique(mask[2:])) <= {0, 1, 2}


def test_unpaired_and_out_of_range_files_are_named(folder) -> None:
    (folder / "train/masks/f3.png").unlink()
    with pytest.raises(DataError, match=r"image .*f3.jpg has no mask in .*train/masks \(1 unpaired\)"):
        FolderSegmentation(folder, "train", num_classes=3)
    with pytest.raises(DataError, match=r"f0.png has label values \[2\] outside \[0, 2\)"):
        FolderSegmentation(folder, "val", num_classes=2)
    with pytest.raises(DataError, match=r"test/images is missing"):
        FolderSegmentation(folder, "test", num_classes=3)


def test_folder_datamodule_trains_through_the_cli(folder, tmp_path) -> None:
    cli = main(
        [
            "fit",
            "--model",
            "DeepLabV3Plus",
            "--model.backbone",
            "mobilenet_v2",
            "--data",
            "FolderDataModule",
            "--data.root",
            str(folder),
            "--data.class_names",
            "[sky, road, car]",
            "--data.crop_size",
            "32",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "0",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert cli.model.hparams.num_classes == 3 and cli.trainer.global_step == 1
    with pytest.raises(ValueError, match="2 colors given for 3 classes"):
        FolderDataModule(str(folder), ["a", "b", "c"], colors=[(0, 0, 0), (1, 1, 1)])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deeplab_lit", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_files_with_one_stem_are_an_error_in_check_data_and_fit(folder, tmp_path) -> None:
    Image.open(folder / "train/images/f1.jpg").save(folder / "train/images/f1.png")  # beside f1.jpg
    data = ["--data", "FolderDataModule", "--data.root", str(folder), "--data.class_names", "[a, b, c]",
            "--data.num_workers", "0"]  # fmt: skip
    message = "f1.jpg and .*f1.png share the stem 'f1'"
    check = cli("check-data", *data)
    assert check.returncode == 1 and re.search(rf"train: .*{message}", check.stdout), check.stdout + check.stderr
    assert "val: 2 samples, 0 bad" in check.stdout
    fit = cli("fit", *data, "--model", "DeepLabV3", "--model.backbone", "resnet18", "--model.multi_grid", "[1, 2]",
              "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert fit.returncode == 1 and re.search(message, fit.stderr), fit.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))
    # masks too (a file system that tells case apart holds f0.png and f0.PNG)
    (folder / "val/masks/f0.PNG").write_bytes((folder / "val/masks/f0.png").read_bytes())
    with pytest.raises(DataError, match="f0.PNG and .*f0.png share the stem 'f0'"):
        FolderSegmentation(folder, "val", num_classes=3)
