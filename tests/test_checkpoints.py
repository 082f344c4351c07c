"""Checkpoints and resuming: a run killed mid-epoch resumes from ``last.ckpt`` to the weights and metrics of an
uninterrupted run, and a save killed half way never leaves a half-written ``last.ckpt``.

Every run is a real ``python -m deeplab_lit fit`` process, killed by a signal (no cleanup, nothing saved on the way
out), then resumed with ``--ckpt_path last``.
"""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from deeplab_lit.callbacks import Checkpoint
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.demo import CONFIG  # the main job's config
from deeplab_lit.systems import DeepLabV3

TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 4  # 16 images, batch 4
TINY = [
    *("--data.init_args.num_train", "16", "--data.init_args.num_val", "4", "--data.init_args.image_size", "32"),
    *("--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "2", "--data.init_args.num_workers", "1"),
    *("--seed_everything", "3", "--trainer.max_epochs", "3", "--trainer.precision", "32-true"),
    *("--trainer.num_sanity_val_steps", "0"),
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
    """A real ``python -m deeplab_lit fit`` of the main job's network on 16 tiny images, 3 epochs of 4 steps."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "deeplab_lit", "fit", "--config", str(CONFIG), *TINY]
    command += ["--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
    command += ["--checkpoint.dirpath", str(out / "ckpt")]
    return subprocess.run([*command, *extra], cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(tmp_path) -> None:
    whole = fit(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    kill = f'{{"class_path": "test_checkpoints.KillAt", "init_args": {{"step": {STEPS_PER_EPOCH + 2}}}}}'
    killed = fit(tmp_path / "killed", "--trainer.callbacks+=" + kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == STEPS_PER_EPOCH  # epoch 1's end

    resumed = fit(tmp_path / "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stdout + resumed.stderr

    a = torch.load(tmp_path / "whole" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not different, f"weights differ after resuming: {different[:5]}"
    best = [next(v for k, v in c["callbacks"].items() if k.startswith("Checkpoint")) for c in (a, b)]
    assert torch.equal(best[0]["best_model_score"], best[1]["best_model_score"])  # val/mIoU of the best epoch
    # the last validation (written by the resumed process into a new logger version folder): the same confusion matrix
    runs = (tmp_path / "whole", tmp_path / "killed")
    last_val = [max(d.rglob("val_metrics.json"), key=lambda p: p.stat().st_mtime) for d in runs]
    metrics = [json.loads(p.read_text()) for p in last_val]
    assert last_val[1].parent.name == "version_1" and metrics[0]["global_step"] == metrics[1]["global_step"]
    assert metrics[0]["confmat"] == metrics[1]["confmat"] and metrics[0]["mIoU"] == metrics[1]["mIoU"]


def test_a_save_killed_half_way_leaves_the_previous_last_checkpoint_whole(tmp_path) -> None:
    limit = '{"class_path": "test_checkpoints.FileSizeLimit", "init_args": {"epoch": 1, "size": 1000000}}'
    killed = fit(tmp_path, "--checkpoint.save_top_k", "0", "--trainer.callbacks+=" + limit)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]  # killed while writing last.ckpt
    last = tmp_path / "ckpt" / "last.ckpt"
    # the half-written file is the temporary one beside last.ckpt (a rename away, on the same filesystem)
    assert (tmp_path / "ckpt" / "last.ckpt.part").stat().st_size == 1000000
    assert last.stat().st_size > 1000000  # written in full at epoch 0's end, before the limit
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == STEPS_PER_EPOCH
    resumed = fit(tmp_path, "--checkpoint.save_top_k", "0", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3 * STEPS_PER_EPOCH


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
