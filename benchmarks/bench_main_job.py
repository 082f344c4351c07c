"""Where the main job's training time goes, phase by phase: the optimisation steps vs everything around them.

    OMP_NUM_THREADS=1 python benchmarks/bench_main_job.py [--epochs 2 --num-train 800] [extra CLI overrides ...]

Runs ``python -m deeplab_lit fit`` in-process on the main job's config (shortened by default) with a callback that
splits the run at Lightning's hooks: start-up, each part of a step (seeding, forward, loss and logging, metrics,
backward, optimizer), the gaps between steps (loading, progress bar, logger), validation, checkpoint saves and
epoch ends. Each phase gets its wall time and CPU time, the main process's (all its threads) and the loader
workers' (child processes, read from Linux's /proc). On a shared machine compare CPU time, with one thread: two
threads spin at every barrier while another process holds a core, which inflates both clocks. The ``steps``
column is a phase's main-process CPU time in mean steps; equal weight digests mean bit-identical training.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L

from deeplab_lit.callbacks import AtomicCheckpointIO
from deeplab_lit.cli import main as cli
from deeplab_lit.demo import CONFIG


def children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each live child process (the loader workers), from Linux's /proc."""
    me, tick, found = os.getpid(), os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            if int(fields[1]) == me:  # fields after the name: state, ppid, ..., utime (12th), stime (13th)
                found[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return found


class PhaseClock(L.Callback):
    """Charges the time since the last hook to the phase it began; worker CPU is read only outside steps."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.workers: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.seen: dict[int, float] = {}  # worker pid -> its CPU time when last read
        self.phase, self.sampled = "start-up (CLI, model, data)", "start-up (CLI, model, data)"
        self.t, self.c = time.perf_counter(), time.process_time()

    def _worker_cpu(self) -> float:
        delta = 0.0
        for pid, total in children_cpu().items():
            delta += total - self.seen.get(pid, 0.0)
            self.seen[pid] = total
        return delta

    def switch(self, phase: str, read_workers: bool = True, enter: bool = True) -> None:
        t, c = time.perf_counter(), time.process_time()
        self.wall[self.phase] += t - self.t
        self.cpu[self.phase] += c - self.c
        self.count[phase] += enter
        if read_workers:
            self.workers[self.sampled] += self._worker_cpu()
            self.sampled = phase
        self.phase, self.t, self.c = phase, time.perf_counter(), time.process_time()

    def on_fit_start(self, *args) -> None:
        self.switch("setup and loaders")

    def on_sanity_check_start(self, *args) -> None:
        self.switch("sanity validation")

    def on_sanity_check_end(self, *args) -> None:
        self.switch("setup and loaders")

    def on_train_epoch_start(self, *args) -> None:
        self.switch("train loop")

    def on_train_batch_start(self, *args) -> None:
        self.switch("step (Lightning)", read_workers=False)

    def on_before_backward(self, *args) -> None:
        self.switch("step: backward", read_workers=False)

    def on_after_backward(self, *args) -> None:
        self.switch("step (Lightning)", read_workers=False, enter=False)

    def on_before_optimizer_step(self, *args) -> None:
        self.switch("step: optimizer", read_workers=False)

    def on_train_batch_end(self, *args) -> None:
        self.switch("between steps", read_workers=False)

    def on_validation_start(self, trainer: L.Trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.switch("validation")

    def on_validation_end(self, trainer: L.Trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.switch("epoch end (metrics, logs)")

    def on_train_epoch_end(self, *args) -> None:
        self.switch("epoch end (metrics, logs)")

    def on_fit_end(self, *args) -> None:
        self.switch("teardown")


def charge(clock: PhaseClock, owner: object, name: str, phase: str, within: tuple[str, ...] = ()) -> None:
    """Charge calls of ``owner.name`` to ``phase`` (only when made during one of ``within``, if given)."""
    method = getattr(owner, name)

    def wrapped(*args, **kwargs):
        before = clock.phase
        if within and before not in within:
            return method(*args, **kwargs)
        clock.switch(phase, read_workers=False)
        try:
            return method(*args, **kwargs)
        finally:
            clock.switch(before, read_workers=False, enter=False)

    setattr(owner, name, wrapped)


def charge_step_parts(clock: PhaseClock, module: L.LightningModule) -> None:
    """Split the step: seeding, forward, the rest of ``training_step`` (loss, metrics, logging), and the
    confusion-matrix update; backward and the optimizer step are split by the callback's hooks."""
    step = ("step (Lightning)", "training_step (loss, log)")
    charge(clock, module, "on_train_batch_start", "step: seeding", step)
    charge(clock, module, "training_step", "training_step (loss, log)", step)
    charge(clock, module, "forward", "step: forward", step)
    charge(clock, module.metrics["train_metrics"], "update", "step: metrics update", step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=800)
    args, overrides = parser.parse_known_args()
    clock = PhaseClock()
    charge(clock, AtomicCheckpointIO, "save_checkpoint", "checkpoint save")
    with tempfile.TemporaryDirectory() as out:
        run = cli(
            [
                "--config",
                str(CONFIG),
                "--trainer.max_epochs",
                str(args.epochs),
                "--data.init_args.num_train",
                str(args.num_train),
                "--trainer.default_root_dir",
                out,
                "--trainer.logger.init_args.save_dir",
                out,
                "--checkpoint.dirpath",
                f"{out}/checkpoints",
                *overrides,
            ],
            run=False,
        )
        run.trainer.callbacks.append(clock)
        charge_step_parts(clock, run.model)
        if run.trainer.progress_bar_callback is not None:
            charge(clock, run.trainer.progress_bar_callback, "on_train_batch_end", "progress bar")
        charge(clock, run.trainer.logger, "log_metrics", "logger (CSV)")
        run.trainer.fit(run.model, run.datamodule)
        clock.switch("done")
        score = run.trainer.checkpoint_callback.best_model_score
        weights = hashlib.sha1(b"".join(t.cpu().numpy().tobytes() for t in run.model.state_dict().values()))
    steps = clock.count["step (Lightning)"]
    step = sum(cpu for phase, cpu in clock.cpu.items() if phase.startswith(("step", "training_step"))) / steps
    print(f"\n{steps} steps, {step * 1e3:.0f} ms main-process CPU a step; best val/mIoU {score:.4f}")
    print(f"final weights sha1 {weights.hexdigest()[:16]} (equal digests: the same training, bit for bit)")
    print(f"{'phase':<28} {'n':>5} {'wall s':>8} {'main CPU s':>10} {'worker CPU s':>12} {'steps':>7}")
    for phase in dict.fromkeys([*clock.wall, *clock.workers]):
        if phase == "done":
            continue
        cpu = clock.cpu[phase]
        print(
            f"{phase:<28} {clock.count[phase]:>5} {clock.wall[phase]:>8.2f} {cpu:>10.2f} "
            f"{clock.workers[phase]:>12.2f} {cpu / step:>7.1f}"
        )
    total_wall, total_cpu = sum(clock.wall.values()), sum(clock.cpu.values()) + sum(clock.workers.values())
    print(f"{'total':<28} {'':>5} {total_wall:>8.2f} {total_cpu:>10.2f} (main + workers)")


if __name__ == "__main__":
    main()
