"""The callback ``benchmarks/gpu_check.py`` adds to its CLI runs (``--trainer.callbacks+=benchmarks.gpu_report.Report``)
for one line of SyncBN layers, seconds and peak GPU memory; a file of its own so that the check can say "skipped"
without importing Lightning."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.gpu_check import REPORT


class Report(Callback):
    """Prints, on rank 0 at the end of fit and predict: SyncBN layers, seconds, peak GPU memory."""

    def _start(self, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30 if pl_module.device.type == "cuda" else 0.0
        sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules())
        if trainer.is_global_zero:
            print(f"{REPORT} sync_bn={sync_bn} peak_GiB={peak:.2f} seconds={time.perf_counter() - self.start:.1f}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module)
