"""Callbacks the CLI always adds: metric JSON files after evaluation, and the prediction writer."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from PIL import Image

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's version folder, or the trainer's root folder without a logger."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


class MetricsWriter(Callback):
    """Write ``{stage}_metrics.json`` (scalars, per-class IoU by name, confusion matrix) after val/test."""

    def _write(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        results = getattr(module, "results", {}).get(stage)
        if results is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        names = class_names(trainer, len(results["IoU"]))
        payload = {k: float(results[k]) for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU")}
        payload["IoU"] = {n: (None if np.isnan(v) else v) for n, v in zip(names, results["IoU"].tolist(), strict=True)}
        payload["confmat"] = results["confmat"].tolist()
        payload.update(epoch=trainer.current_epoch, global_step=trainer.global_step)
        path = run_dir(trainer) / f"{stage}_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test")


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette PNG image of a label map (VOC style: the pixel values are the labels)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


class PredictionWriter(BasePredictionWriter):
    """For each image: ``<stem>.png`` (label PNG with the dataset's palette), ``<stem>_overlay.png`` and one
    ``predictions.json`` with per-image class fractions. Unreadable images are reported and skipped.

    Args:
        output_dir: folder for the files; default ``<run folder>/predictions``.
        overlay_alpha: opacity of the colour mask over the image in the overlays.
        label_ids: also write ``<stem>_labelIds.png`` in the dataset's official label ids (Cityscapes), the
            input of the official evaluation script.
    """

    def __init__(self, output_dir: str | None = None, overlay_alpha: float = 0.5, label_ids: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.overlay_alpha, self.label_ids = output_dir, overlay_alpha, label_ids
        self.fractions: dict[str, dict[str, float]] = {}
        self.failures: dict[str, str] = {}

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.label_ids and not hasattr(trainer.datamodule, "to_label_ids"):
            raise ValueError(
                f"--prediction.label_ids needs a dataset with official label ids (Cityscapes); "
                f"{type(trainer.datamodule).__name__} has none"
            )
        self.fractions, self.failures = {}, {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        palette = getattr(trainer.datamodule, "palette", None) or [(i, i, i) for i in range(256)]
        names = class_names(trainer, pl_module.hparams.num_classes)
        for item in prediction:
            if item["error"]:
                log.warning("skipped %s: %s", item["path"], item["error"])
                self.failures[item["path"]] = item["error"]
                continue
            labels = item["labels"].numpy()
            stem = Path(item["path"]).stem
            mask = colorize(labels, palette)
            mask.save(out / f"{stem}.png")
            if self.label_ids:
                Image.fromarray(trainer.datamodule.to_label_ids(labels)).save(out / f"{stem}_labelIds.png")
            image = Image.fromarray(item["image"].permute(1, 2, 0).numpy())
            Image.blend(image, mask.convert("RGB"), self.overlay_alpha).save(out / f"{stem}_overlay.png")
            counts = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
            self.fractions[item["path"]] = {n: round(float(c), 6) for n, c in zip(names, counts, strict=False) if c}

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"images": self.fractions, "failed": self.failures}
        (out / "predictions.json").write_text(json.dumps(summary, indent=1))
        log.info("wrote %d predictions to %s (%d failed)", len(self.fractions), out, len(self.failures))
