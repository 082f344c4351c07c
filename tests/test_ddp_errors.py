"""A user error in one DDP process ends the whole run with the short message and exit status 1, whichever process
meets it: real ``python -m deeplab_lit fit`` runs with 2 gloo processes on CPU, and Lightning's process watch."""

import os
import subprocess
import sys
import time

import pytest
from PIL import Image
from test_folder import write_folder

from deeplab_lit.data.datamodule import SeededSampler

V3PLUS = ["--model", "DeepLabV3Plus", "--model.backbone", "mobilenet_v2", "--model.aspp_channels", "8"]
V3PLUS += ["--model.decoder_channels", "8", "--model.low_level_channels", "8"]


def first_epoch_share(rank: int) -> list[int]:
    """The training images (of 4) that process ``rank`` of 2 loads in epoch 0 with seed 0."""
    sampler = SeededSampler(range(4), num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
    sampler.set_epoch(0)
    return [index for index, _ in sampler]


@pytest.mark.slow  # two 2-process runs, about 20 s each
@pytest.mark.parametrize("rank", [0, 1])
def test_a_data_error_met_by_one_process_ends_the_run_with_its_message_and_status_1(tmp_path, rank) -> None:
    root = write_folder(tmp_path / "tree")
    stem = f"f{first_epoch_share(rank)[0]}"
    assert int(stem[1:]) not in first_epoch_share(1 - rank)
    Image.new("L", (20, 20)).save(root / "train" / "masks" / f"{stem}.png")
    args = [sys.executable, "-m", "deeplab_lit", "fit", *V3PLUS, "--data", "FolderDataModule", "--data.root", str(root)]
    args += ["--data.class_names", "[a, b, c]", "--data.crop_size", "32", "--data.batch_size", "2"]
    args += ["--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0"]
    args += ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"masks/{stem}.png is 20x20" in result.stderr
    assert "Traceback" not in result.stderr and "Connection closed" not in result.stderr, result.stderr


WATCHED = """
import subprocess, sys, time
import deeplab_lit.cli  # noqa: F401  (installs its watch of the DDP processes)
from lightning.fabric.strategies.launchers.subprocess_script import _launch_process_observer
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit({code})"])
_launch_process_observer([child])
time.sleep(120)  # as a process blocked in a collective (NCCL) that its peer left
"""


@pytest.mark.parametrize(("child_code", "expected"), [(1, 1), pytest.param(3, -9, marks=pytest.mark.slow)])
def test_a_process_blocked_when_another_stops_with_a_user_error_exits_with_status_1(child_code, expected) -> None:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", WATCHED.format(code=child_code)], timeout=100)
    assert result.returncode == expected  # any other failure: Lightning's SIGKILL of every process, as before
    assert time.monotonic() - start < 60
