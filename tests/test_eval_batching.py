"""Evaluation gives every image the prediction it gets alone, whatever the batch size or the number of processes.

A split of 7 images of 4 sizes, evaluated through the real CLI by a small DeepLabV3 with image pooling on (whose
global average would see any padding), must give one confusion matrix for ``val_batch_size`` 1, 3 and 8, on 1 and 2
processes, through the plain forward and through the test-time pipeline with the CRF.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_lit.nets import DeepLabV3Net

SIZES = [(40, 48), (33, 57), (48, 40), (40, 48), (52, 36), (33, 57), (40, 48)]
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "GROUP_RANK")


def calibrated_net() -> DeepLabV3Net:
    """A random DeepLabV3 whose BatchNorm statistics are measured on noise: its predictions vary over the image
    (with the statistics at their defaults, every pixel gets one class and no comparison would mean anything)."""
    net = DeepLabV3Net(3, backbone="resnet18", multi_grid=(1, 2), aspp_channels=16, image_pooling=True)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 48, 48))
    return net.eval()


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory) -> Path:
    """A folder split of 7 random images of 4 sizes with random 3-class masks, and the network's weights."""
    root = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(0)  # a module fixture runs before the per-test seeding
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, (h, w), dtype=np.uint8)).save(root / split / "masks" / f"{i}.png")
    torch.save(calibrated_net().state_dict(), root / "net.pt")
    return root


def cli_test(root: Path, out: Path, batch: int, devices: int, *extra: str) -> list[list[int]]:
    """``python -m deeplab_lit test`` on the folder split; the confusion matrix of ``test_metrics.json``."""
    args = [
        sys.executable, "-m", "deeplab_lit", "test",
        "--model", "DeepLabV3",
        "--model.init_args.backbone", "resnet18",
        "--model.init_args.multi_grid", "[1, 2]",
        "--model.init_args.aspp_channels", "16",
        "--model.init_args.image_pooling", "true",
        "--model.init_args.init_from", str(root / "net.pt"),
        "--data", "FolderDataModule",
        "--data.init_args.root", str(root),
        "--data.init_args.class_names", "[a, b, c]",
        "--data.init_args.val_batch_size", str(batch),
        "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", str(devices),
        "--trainer.strategy", "ddp" if devices > 1 else "auto",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "test_metrics.json").read_text())["confmat"]


def labelled_pixels() -> int:
    return sum(h * w for h, w in SIZES)


@pytest.mark.slow
def test_batch_size_does_not_change_the_confusion_matrix(mixed_sizes, tmp_path) -> None:
    alone = cli_test(mixed_sizes, tmp_path / "b1", 1, 1)
    batched = cli_test(mixed_sizes, tmp_path / "b3", 3, 1)
    assert batched == alone
    assert sum(map(sum, alone)) == labelled_pixels()
    assert sum(1 for row in alone for count in row if count) >= 4  # predictions vary: the comparison means something


@pytest.mark.slow
def test_batch_size_and_processes_do_not_change_the_confusion_matrix(mixed_sizes, tmp_path) -> None:
    alone = cli_test(mixed_sizes, tmp_path / "ref", 1, 1)
    for devices in (1, 2):
        for batch in (1, 3, 8):
            if (batch, devices) != (1, 1):
                confmat = cli_test(mixed_sizes, tmp_path / f"b{batch}d{devices}", batch, devices)
                assert confmat == alone, (batch, devices)
    # the test-time pipeline (scales, flip, sliding window, CRF on each image's own pixels) batches the same way
    crf = "{w1: 4, sigma_alpha: 5, sigma_beta: 3, w2: 3, sigma_gamma: 3, iterations: 2}"
    tta = ("--model.init_args.eval_scales", "[0.75, 1.0]", "--model.init_args.eval_flip", "true",
           "--model.init_args.sliding_window", "32", "--model.init_args.crf", crf,
           "--model.init_args.crf_workers", "0")  # fmt: skip
    tta_alone = cli_test(mixed_sizes, tmp_path / "tta1", 1, 1, *tta)
    assert cli_test(mixed_sizes, tmp_path / "tta8d2", 8, 2, *tta) == tta_alone
    assert tta_alone != alone  # the pipeline ran
