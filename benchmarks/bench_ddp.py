"""DDP on CPU: 2 processes (gloo) vs 1 process on the same cores, and where the time of a DDP step goes.

    python benchmarks/bench_ddp.py [--images 512 --batch 16 --epochs 2 --repeats 2]

The main job's network and data (DeepLabV3+ MobileNetV2, OS 16, 64-px Shapes, bf16 autocast, channels_last)
trained through a real ``Trainer`` three ways, each in a fresh process group:
  * single: 1 process, all cores as threads, batch B;
  * ddp: ``strategy="ddp"`` with 2 processes, cores split between them, B/2 per process (the same global batch,
    so the same number of optimizer steps and the same learning rate);
  * half: 1 process with one process's share of the cores and B/2 per step, i.e. one DDP rank's compute alone.
A callback times every training step (forward, backward, gradient all-reduce, optimizer) and the gaps between steps
(batch fetch and loop); the last epoch is reported. In the DDP run, rank 0 also times a blocking all-reduce of a
gradient-sized fp32 buffer over gloo. Rounds alternate single, ddp, half; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from deeplab_lit.data import ShapesDataModule
from deeplab_lit.systems import DeepLabV3Plus

DATA = {"image_size": 64, "shapes": ["circle", "rectangle", "ring"], "max_objects": 3, "textured": 0.0, "clutter": 0}
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "GROUP_RANK")


class StepTimer(L.Callback):
    """Per epoch: wall time, summed step time (batch start → batch end) and summed gaps between steps."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = self.last = time.perf_counter()
        self.epochs.append({"epoch": 0.0, "step": 0.0, "gap": 0.0, "steps": 0})

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        self.epochs[-1]["gap"] += now - self.last
        self.batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.last = time.perf_counter()
        self.epochs[-1]["step"] += self.last - self.batch_start
        self.epochs[-1]["steps"] += 1

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epochs[-1]["epoch"] = time.perf_counter() - self.start


def allreduce_seconds(numel: int, repeats: int = 10) -> float:
    """Median time of a blocking all-reduce of ``numel`` fp32 values over the default process group."""
    buffer = torch.ones(numel)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> None:
    """One timed fit; with ``--devices 2`` Lightning relaunches this script once more as rank 1."""
    L.seed_everything(0)
    data = ShapesDataModule(num_train=args.images, batch_size=args.batch, num_workers=0, num_val=1, **DATA)
    model = DeepLabV3Plus(num_classes=data.num_classes, backbone="mobilenet_v2", output_stride=16, channels_last=True)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="bf16-mixed",
        max_epochs=args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, data)
    report = {**timer.epochs[-1], "threads": torch.get_num_threads(), "world": trainer.world_size}
    if trainer.world_size > 1:
        report["allreduce"] = allreduce_seconds(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if trainer.global_rank == 0:
        Path(args.out).write_text(json.dumps(report))


def launch(mode: str, args: argparse.Namespace, cores: int, out: Path) -> dict[str, float]:
    devices, threads, batch = {"single": (1, cores, args.batch), "ddp": (2, cores // 2, args.batch // 2)}.get(
        mode, (1, cores // 2, args.batch // 2)
    )
    images = args.images // 2 if mode == "half" else args.images  # one rank's share
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV} | {"OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", "--devices", str(devices), "--batch", str(batch)]
    cmd += ["--images", str(images), "--epochs", str(args.epochs), "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cores = len(os.sched_getaffinity(0))
    rounds: dict[str, list[dict[str, float]]] = {"single": [], "ddp": [], "half": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in rounds:
                rounds[mode].append(launch(mode, args, cores, Path(tmp) / f"{mode}{r}.json"))

    def med(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in rounds[mode])

    print(
        f"torch {torch.__version__}, {cores} cores, {args.images} images 64 px, global batch {args.batch}, "
        f"epoch {args.epochs} of {args.epochs} timed, {args.repeats} alternating rounds (medians)\n"
    )
    print("| run | processes × threads | batch / process | epoch (s) | img/s | step (ms) | between steps (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in rounds:
        run = rounds[mode][0]
        images = args.images // 2 if mode == "half" else args.images
        steps = med(mode, "steps")
        print(
            f"| {mode} | {run['world']} × {run['threads']} | {args.batch // (1 if mode == 'single' else 2)} "
            f"| {med(mode, 'epoch'):.2f} | {images / med(mode, 'epoch'):.1f} | {1e3 * med(mode, 'step') / steps:.0f} "
            f"| {1e3 * med(mode, 'gap') / steps:.1f} |"
        )
    single, ddp = med("single", "epoch"), med("ddp", "epoch")
    step_ddp = 1e3 * med("ddp", "step") / med("ddp", "steps")
    step_half = 1e3 * med("half", "step") / med("half", "steps")
    print(f"\nthroughput ratio ddp / single: {single / ddp:.3f}")
    print(
        f"a DDP step {step_ddp:.0f} ms = one rank's compute {step_half:.0f} ms + {step_ddp - step_half:.0f} ms "
        f"(gradient all-reduce and waiting for the other rank); a blocking all-reduce of the gradients alone: "
        f"{1e3 * med('ddp', 'allreduce'):.1f} ms"
    )


if __name__ == "__main__":
    main()
