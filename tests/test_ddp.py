"""Evaluation with several processes counts every image exactly once: a real 2-process DDP run on CPU (gloo).

The test runs this file as a script (``strategy="ddp"`` relaunches it once per extra process); the script fits
briefly, then validates the same weights with our samplers (batch 1 and 2) and with Lightning's own
``DistributedSampler``, and rank 0 writes the results. The test compares them with a single-process run.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from test_systems import NaNBatch
from torch.utils.data import DataLoader

from deeplab_lit.callbacks import MetricsWriter, PredictionWriter
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.data.batching import stack_pairs
from deeplab_lit.data.datamodule import Transformed
from deeplab_lit.data.shapes import write_shapes_images
from deeplab_lit.data.transforms import EvalPreset
from deeplab_lit.systems import DeepLabV3

SMALL_V3 = {"backbone": "resnet18", "multi_grid": (1, 2), "aspp_channels": 16}
# 5 validation images on 2 processes: 3 + 2, so per-process batch counts differ
DATA = {"num_train": 8, "num_val": 5, "num_test": 5, "image_size": 48, "ignore_band": 1, "num_workers": 0}
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "GROUP_RANK")


class LightningSamplers(ShapesDataModule):
    """The counter-example: no sampler of ours, so Lightning injects its padded ``DistributedSampler``."""

    def val_dataloader(self):
        dataset = Transformed(self.dataset("val"), EvalPreset(self.mean, self.std))
        return DataLoader(dataset, batch_size=self.val_batch_size, collate_fn=stack_pairs)


def data(cls=ShapesDataModule, **kwargs) -> ShapesDataModule:
    return cls(**{**DATA, "batch_size": 2, "val_batch_size": 2, **kwargs})


def trainer(root: Path, devices: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def ddp_main(out: Path) -> None:
    """Run by every process. The fit uses plain BatchNorm: DDP refuses SyncBatchNorm on CPU ("SyncBatchNorm layers
    only work with GPU modules"); evaluation does not wrap the model in DDP and SyncBatchNorm in eval mode uses the
    running statistics, so ``validate``/``test`` with ``sync_batchnorm=True`` run on CPU too.
    """
    L.seed_everything(0)
    model = DeepLabV3(num_classes=7, lr=0.02, **SMALL_V3)
    fit = trainer(out, 2, max_epochs=2)
    fit.fit(model, data())
    sampler = fit.train_dataloader.sampler
    report = {
        "fit": {
            "train_sampler": type(sampler).__name__,
            "sampler_epoch": sampler.epoch,
            "val_sampler": type(fit.val_dataloaders.sampler).__name__,
            "confmat_total": int(model.results["val"]["confmat"].sum()),
            "sync_bn_layers": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),  # CPU: none
        }
    }
    if fit.global_rank == 0:
        torch.save(model.state_dict(), out / "weights.pt")
    fit.strategy.barrier()
    model.load_state_dict(torch.load(out / "weights.pt"))  # the very weights the single-process run uses
    for name, cls, batch, sync_bn in (
        ("ours_b1", ShapesDataModule, 1, False),
        ("ours_b2", ShapesDataModule, 2, False),
        ("lightning_b1", LightningSamplers, 1, False),
        ("sync_bn_b1", ShapesDataModule, 1, True),  # last: it converts the model's BatchNorm layers
    ):
        t = trainer(out, 2, sync_batchnorm=sync_bn)
        t.validate(model, data(cls, val_batch_size=batch), verbose=False)
        batches = [None] * t.world_size
        dist.all_gather_object(batches, int(t.num_val_batches[0]))
        results = model.results["val"]
        report[name] = {
            "sampler": type(t.val_dataloaders.sampler).__name__,
            "batches_per_rank": batches,
            "confmat": results["confmat"].tolist(),
            "mIoU": float(results["mIoU"]),
        }
    # the CLI's writers on 2 processes: every process reaches their collective calls, rank 0 writes one file each
    if fit.global_rank == 0:
        write_shapes_images(out / "images", 5, image_size=40)
    fit.strategy.barrier()
    t = trainer(out, 2, callbacks=[MetricsWriter(), PredictionWriter(str(out / "predictions"))])
    t.validate(model, data(), verbose=False)
    t.predict(model, data(predict_path=str(out / "images")), return_predictions=False)
    if fit.global_rank == 0:
        (out / "ddp.json").write_text(json.dumps(report))


def ddp_non_finite_main(out: Path) -> None:
    """Run by every process: a fit whose loss turns NaN at step 2 on rank 1 only (2 steps per epoch)."""
    fit = trainer(out, 2, max_epochs=2, limit_val_batches=0, callbacks=[NaNBatch(2, ranks=(1,))])
    fit.fit(DeepLabV3(num_classes=7, **SMALL_V3), data())


def run_script(out: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    proc = subprocess.Popen(
        [sys.executable, __file__, str(out), *args],
        cwd=Path(__file__).parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be ended with every rank
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)  # until every rank has closed the pipe
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        raise AssertionError(f"the DDP run hung:\n{stdout[-4000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)


def total(confmat: list[list[int]]) -> int:
    return sum(map(sum, confmat))


def test_ddp_evaluation_counts_every_image_exactly_once(tmp_path) -> None:
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert "batch 2 per device × 2 devices × 1 nodes = global 4" in proc.stdout

    # labelled pixels of the split, counted from the dataset itself
    labelled = [int((mask != 255).sum()) for _, mask in data().dataset("val")]
    assert sum(labelled) < len(labelled) * 48 * 48  # the ignore band is there to be left out

    # training: our SeededSampler (a shuffled DistributedSampler), re-seeded by Lightning every epoch; validation
    # inside fit (DDP-wrapped forward, 2 + 1 batches) counts every labelled pixel once
    assert report["fit"] == {
        "train_sampler": "SeededSampler",
        "sampler_epoch": 1,
        "val_sampler": "SizeGroupedSampler",
        "confmat_total": sum(labelled),
        "sync_bn_layers": 0,
    }

    # validation on 2 processes == validation on 1, exactly, with uneven per-process batch counts
    model = DeepLabV3(num_classes=7, **SMALL_V3)
    model.load_state_dict(torch.load(tmp_path / "weights.pt"))
    for batch, per_rank in ((1, [3, 2]), (2, [2, 1])):
        trainer(tmp_path, 1).validate(model, data(val_batch_size=batch), verbose=False)
        single, ddp = model.results["val"], report[f"ours_b{batch}"]
        assert ddp["sampler"] == "SizeGroupedSampler" and ddp["batches_per_rank"] == per_rank
        assert ddp["confmat"] == single["confmat"].tolist()
        assert ddp["mIoU"] == float(single["mIoU"])
        assert total(ddp["confmat"]) == sum(labelled)

    # SyncBatchNorm (eval mode) changes nothing in evaluation, on CPU too
    assert report["sync_bn_b1"]["confmat"] == report["ours_b1"]["confmat"]

    # the counter-example: Lightning's sampler pads 5 images to 6 by repeating image 0, counted twice
    lightning = report["lightning_b1"]
    assert lightning["sampler"] == "DistributedSampler" and lightning["batches_per_rank"] == [3, 3]
    assert total(lightning["confmat"]) == sum(labelled) + labelled[0]

    # the metric and prediction writers: one JSON each, every image once
    assert total(json.loads((tmp_path / "val_metrics.json").read_text())["confmat"]) == sum(labelled)
    predictions = json.loads((tmp_path / "predictions/predictions.json").read_text())
    assert sorted(Path(p).name for p in predictions["images"]) == [f"shapes_{i:05d}.png" for i in range(5)]
    assert len(list((tmp_path / "predictions").glob("shapes_*_overlay.png"))) == 5


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_together(tmp_path) -> None:
    # without the gathered decision only rank 1 raises it, and rank 0 fails in DDP's gradient all-reduce (gloo:
    # "Connection closed by peer"; NCCL waits for its timeout, 30 minutes by default)
    proc = run_script(tmp_path, "non-finite", timeout=180)
    assert proc.returncode != 0
    message = "non-finite loss (rank 1: nan) at global step 2, epoch 1, batch 0; no checkpoint was saved yet"
    assert proc.stdout.count(f"FloatingPointError: {message}") == 2, proc.stdout[-4000:]  # raised by both processes


if __name__ == "__main__":
    (ddp_non_finite_main if sys.argv[2:] == ["non-finite"] else ddp_main)(Path(sys.argv[1]))
