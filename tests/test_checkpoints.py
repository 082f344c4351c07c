"""Checkpoints and resuming: a run killed mid-epoch resumes from ``last.ckpt`` to the weights and metrics of an
uninterrupted run, and a save killed half way never leaves a half-written ``last.ckpt``.

Every run is a real ``python -m deeplab_lit fit`` process of the main job's config, killed by a signal (no cleanup,
nothing saved on the way out), then resumed with the same command and ``--ckpt_path last``.
"""

import csv
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from deeplab_lit.callbacks import Checkpoint
from deeplab_lit.cli import main
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.demo import CONFIG  # the main job's config
from deeplab_lit.systems import DeepLabV3

TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 4  # 16 images, batch 4
TINY = [
    *("--data.init_args.num_train", "16", "--data.init_args.num_val", "4", "--data.init_args.image_size", "32"),
    *("--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "2", "--data.init_args.num_workers", "1"),
    *("--seed_everything", "3", "--trainer.max_epochs", "3", "--trainer.precision", "32-true"),
    *("--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
]


class KillAt(L.Callback):
    """SIGKILLs its own process as training step ``step`` starts, as a node failure or the OOM killer would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FileSizeLimit(L.Callback):
    """From epoch ``epoch`` on, writing a file past ``size`` bytes kills the process (SIGXFSZ): a save cut short."""

    def __init__(self, epoch: int, size: int) -> None:
        self.epoch, self.size = epoch, size

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.current_epoch == self.epoch:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default (writes raise EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, resource.RLIM_INFINITY))


def fit(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """A real ``python -m deeplab_lit fit`` of the main job's config on 16 tiny images, 3 epochs of 4 steps, its run
    folder under ``out``: checkpoints in ``out/shapes_deeplabv3plus/version_N/checkpoints`` unless ``extra`` says."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "deeplab_lit", "fit", "--config", str(CONFIG), *TINY]
    command += ["--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
    return subprocess.run([*command, *extra], cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_with_ckpt_path_last_to_the_same_weights_and_metrics(tmp_path) -> None:
    # the uninterrupted run is also a first start with --ckpt_path last (a SLURM job does that): nothing to resume
    whole = fit(tmp_path / "whole", "--ckpt_path", "last")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "--ckpt_path last: no checkpoint in " in whole.stderr and "; training from scratch" in whole.stderr

    kill = f'{{"class_path": "test_checkpoints.KillAt", "init_args": {{"step": {STEPS_PER_EPOCH + 2}}}}}'
    killed = fit(tmp_path / "killed", "--trainer.callbacks+=" + kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "killed" / "shapes_deeplabv3plus" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == STEPS_PER_EPOCH  # epoch 1's end

    resumed = fit(tmp_path / "killed", "--ckpt_path", "last")  # exactly the README's command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--ckpt_path last: resuming from {last} (epoch 0, step {STEPS_PER_EPOCH})" in resumed.stderr
    assert "continuing CSVLogger version_0" in resumed.stderr
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]  # the same run folder, no version_1

    a, b = load(tmp_path / "whole" / "shapes_deeplabv3plus" / "version_0" / "checkpoints" / "last.ckpt"), load(last)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not different, f"weights differ after resuming: {different[:5]}"
    best = [next(v for k, v in c["callbacks"].items() if k.startswith("Checkpoint")) for c in (a, b)]
    assert torch.equal(best[0]["best_model_score"], best[1]["best_model_score"])  # val/mIoU of the best epoch
    # the run folder's files continue: the last validation's confusion matrix, and every logged row before and after
    # the kill (rows the killed process logged after its checkpoint are replaced by the resumed run's)
    runs = (tmp_path / "whole" / "shapes_deeplabv3plus" / "version_0", run)
    metrics = [json.loads((r / "val_metrics.json").read_text()) for r in runs]
    assert metrics[0]["global_step"] == metrics[1]["global_step"] == 3 * STEPS_PER_EPOCH
    assert metrics[0]["confmat"] == metrics[1]["confmat"] and metrics[0]["mIoU"] == metrics[1]["mIoU"]
    rows = [list(csv.DictReader((r / "metrics.csv").open())) for r in runs]
    assert len(rows[1]) > 3 * STEPS_PER_EPOCH and rows[0] == rows[1]


@pytest.mark.slow
def test_a_save_killed_half_way_leaves_the_previous_last_checkpoint_whole(tmp_path) -> None:
    limit = '{"class_path": "test_checkpoints.FileSizeLimit", "init_args": {"epoch": 1, "size": 1000000}}'
    options = ("--checkpoint.save_top_k", "0", "--checkpoint.dirpath", str(tmp_path / "ckpt"))
    killed = fit(tmp_path, *options, "--trainer.callbacks+=" + limit)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]  # killed while writing last.ckpt
    last = tmp_path / "ckpt" / "last.ckpt"
    # the half-written file is the temporary one beside last.ckpt (a rename away, on the same filesystem)
    assert (tmp_path / "ckpt" / "last.ckpt.part").stat().st_size == 1000000
    assert last.stat().st_size > 1000000  # written in full at epoch 0's end, before the limit
    assert load(last)["global_step"] == STEPS_PER_EPOCH
    resumed = fit(tmp_path, *options, "--ckpt_path", "last")  # checkpoints outside the run folder: resumed there too
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing CSVLogger version_0" in resumed.stderr
    assert load(last)["global_step"] == 3 * STEPS_PER_EPOCH
    assert [p.name for p in (tmp_path / "shapes_deeplabv3plus").iterdir()] == ["version_0"]


def test_last_checkpoint_follows_every_epoch_when_the_monitored_metric_stops_improving(tmp_path) -> None:
    # "step" with mode "min" is best at the first save and never again; Lightning's own ModelCheckpoint would leave
    # last.ckpt at that first epoch, and resuming from it would repeat the others.
    model = DeepLabV3(num_classes=7, backbone="resnet18", multi_grid=(1, 2), aspp_channels=16)
    data = ShapesDataModule(num_train=4, num_val=2, image_size=32, batch_size=2, num_workers=0)
    checkpoint = Checkpoint(dirpath=tmp_path, monitor="step", mode="min", save_last=True)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, callbacks=[checkpoint])  # fmt: skip
    trainer.fit(model, data)
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == trainer.global_step == 6


SMALL = [
    "--config", "experiments/configs/shapes/deeplabv3_resnet18-os16_b16-4e_64.yaml", "--trainer.precision", "32-true",
    "--data.init_args.num_train", "8", "--data.init_args.num_val", "2", "--data.init_args.image_size", "32",
    "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.mark.slow  # 3 × 2 fits: about 20 s of CPU each
@pytest.mark.parametrize("logger", ["none", "tensorboard", "wandb"])
def test_ckpt_path_last_continues_the_run_folder_of_any_logger(logger, tmp_path, monkeypatch, caplog) -> None:
    args = ["--trainer.default_root_dir", str(tmp_path)] + {
        "none": ["--trainer.logger", "false"],
        "tensorboard": ["--trainer.logger", "TensorBoardLogger", "--trainer.logger.init_args.save_dir", str(tmp_path)],
        "wandb": ["--config", "experiments/configs/_base/logger_wandb.yaml"],
    }[logger]
    if logger == "wandb":
        wandb = pytest.importorskip("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_DIR", str(tmp_path))
        wandb.teardown()  # forget the settings (mode, folder) of an earlier W&B run in this process
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    first = main(["fit", *SMALL, *args, "--trainer.max_epochs", "1"])
    if logger == "wandb":
        wandb.finish()
    resumed = main(["fit", *SMALL, *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    if logger == "wandb":
        wandb.finish()
    last = first.trainer.checkpoint_callback.last_model_path
    assert f"--ckpt_path last: resuming from {last} (epoch 0, step 2)" in caplog.text
    assert resumed.trainer.ckpt_path == last and resumed.trainer.global_step == 4
    # the same run folder: checkpoints, logs and val_metrics.json; for W&B the same run id, resumed
    assert resumed.trainer.checkpoint_callback.dirpath == first.trainer.checkpoint_callback.dirpath
    assert resumed.trainer.log_dir == first.trainer.log_dir
    assert json.loads((Path(first.trainer.log_dir) / "val_metrics.json").read_text())["global_step"] == 4
    if logger != "none":
        assert resumed.trainer.logger.version == first.trainer.logger.version
    if logger == "wandb":
        runs = list((tmp_path / "wandb").glob("offline-run-*"))
        assert len(runs) == 2 and {r.name.rpartition("-")[2] for r in runs} == {first.trainer.logger.version}
